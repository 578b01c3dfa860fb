"""``orchestrator-fsm validate``: check a recipe and summarise what it would run."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from orchestrator_fsm.cli._shared import EXIT_OK, config_or_exit_code

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["cmd_validate"]


def cmd_validate(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Load ``args.recipe`` with ``args.overrides`` and print its summary; the exit code."""
    loaded = config_or_exit_code(args, err)
    if isinstance(loaded, int):
        return loaded
    cfg = loaded
    from rich.table import Table
    from rich.text import Text

    from orchestrator_fsm._text import counted
    from orchestrator_fsm.phases.guarding import resolve_lock_path

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
    ):
        table.add_row(field, Text(value))
    out.print(table)
    return EXIT_OK
