"""``orchestrator-fsm validate``: check a recipe and summarise what it would run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from orchestrator_fsm.cli._shared import (
    EXIT_OK,
    EXIT_USAGE,
    config_or_exit_code,
    say,
    split_bare_overrides,
)

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["cmd_validate"]


def cmd_validate(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Load ``args.recipe`` with ``args.overrides`` (structured by ``args.entry``'s
    schema, when given) and print its summary; the exit code."""
    split_bare_overrides(args)
    if args.entry is None:
        # What run uses without --entry: the demo pipeline, whose schema is importable
        # without the pipeline itself (and torch).
        from orchestrator_fsm.demo.schema import DEMO_SCHEMA

        schema: dict[str, type] = dict(DEMO_SCHEMA)
    else:
        from orchestrator_fsm.entry import entry_schema, entry_search_path, resolve_entry
        from orchestrator_fsm.errors import EntryPointError

        with entry_search_path(args.entry):
            try:
                schema = entry_schema(resolve_entry(args.entry), args.entry)
            except EntryPointError as exc:
                say(err, f"error: {exc}", "red")
                return EXIT_USAGE
    loaded = config_or_exit_code(args, err, schema)
    if isinstance(loaded, int):
        if args.entry is None:
            say(
                err,
                "(checked as run checks it without --entry: with the demo pipeline's schema; "
                "give --entry for your pipeline)",
                "dim",
            )
        return loaded
    cfg = loaded
    from rich.table import Table
    from rich.text import Text

    from orchestrator_fsm._text import counted
    from orchestrator_fsm.phases.lock import resolve_lock_path

    hardware, lock = cfg.hardware, cfg.infrastructure.lock
    if lock.enabled:
        lock_text = f"{resolve_lock_path(cfg)} (wait up to {lock.timeout_s:g}s)"
    else:
        lock_text = "disabled"
    workers = hardware.effective_num_workers
    table = Table(title=f"{cfg.source or args.recipe}: valid", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field, value in (
        ("dataset", cfg.dataset.name),
        ("architecture", cfg.architecture.name),
        ("seed", str(cfg.training.seed)),
        ("device", hardware.device),
        ("reproducible", f"{hardware.reproducible} ({counted(workers, 'loader worker')})"),
        ("output dir", str(cfg.telemetry.output_dir)),
        ("lock", lock_text),
        ("config hash", cfg.config_hash()[:12]),
        ("pipeline schema", _schema_text(args.entry, schema)),
    ):
        table.add_row(field, Text(value))
    out.print(table)
    return EXIT_OK


def _schema_text(entry: str | None, schema: dict[str, type]) -> str:
    from orchestrator_fsm.demo import DEMO_ENTRY

    by = f"{entry}" if entry is not None else f"{DEMO_ENTRY} (the default --entry)"
    if not schema:
        return f"none declared by {by}"
    sections = ", ".join(f"{section} ({cls.__name__})" for section, cls in schema.items())
    return f"{sections}, declared by {by}"
