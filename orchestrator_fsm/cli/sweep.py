"""``orchestrator-fsm run --multirun``: every combination of the swept overrides, each
as its own ``orchestrator-fsm run`` process, grouped under one sweep record.

Every member's config is checked before the first starts (exit 2 if any is invalid,
and nothing runs). Members run one at a time, or ``-j N`` at once, each in its own
process (a member that crashes takes no other down) with its console output in the
sweep's folder. A failing member does not stop the others unless ``--fail-fast``.
SIGINT, SIGTERM and SIGHUP are passed on to the running members, which end
``interrupted``; no further member starts. One table summarises the members at the
end. The exit code is 0 when every member completed, 1 when one failed, 128 + the
signal's number when a signal stopped the sweep, 2 for a config error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import attrs

from orchestrator_fsm.cli._shared import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    print_config_error,
    recipe_label,
    say,
)
from orchestrator_fsm.errors import ConfigError, EntryPointError
from orchestrator_fsm.layout import SWEEP_FILE, sweep_dir
from orchestrator_fsm.lifecycle.metrics import json_number, json_numbers
from orchestrator_fsm.status import COMPLETED, FAILED, INTERRUPTED, RUNNING
from orchestrator_fsm.sweep import (
    expand_sweep,
    member_run_dirs,
    new_sweep_id,
    write_sweep_record,
)

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator_fsm.config import Config
    from orchestrator_fsm.lifecycle.record import RunRecord

__all__ = ["cmd_sweep"]

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How often the sweep looks at its running members.
_POLL_S = 0.1


@attrs.define
class _Member:
    """One run of the sweep, from its overrides to its outcome."""

    number: int
    overrides: list[str]
    output_dir: Path
    log: Path
    status: str = "pending"
    exit_code: int | None = None
    started: float | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    run: RunRecord | None = None
    process: subprocess.Popen[bytes] | None = None
    stream: IO[bytes] | None = None

    def to_json(self) -> dict[str, Any]:
        run = self.run
        return {
            "number": self.number,
            "overrides": self.overrides,
            "status": self.status,
            "exit_code": self.exit_code,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_s": self.duration_s,
            "log": self.log.name,
            "run_id": None if run is None else run.run_id,
            "run_dir": None if run is None else str(run.root),
            "summary": {} if run is None else json_numbers(run.summary),
            "metrics": {}
            if run is None
            else {k: json_number(m.last) for k, m in run.metrics.items()},
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _member_status(code: int) -> str:
    if code == EXIT_OK:
        return COMPLETED
    if code > 128 or code < 0:  # 128 + a signal's number, or killed by a signal
        return INTERRUPTED
    return FAILED


def _configs(
    args: argparse.Namespace, members: list[list[str]], schema: dict[str, type]
) -> list[Config] | ConfigError:
    """Each member's config, checked as its run will check it; the first error."""
    from orchestrator_fsm.cli.what_runs import script_recipe
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.demo import demo_recipe

    configs = []
    for overrides in members:
        every = [*args.set_overrides, *overrides]
        try:
            if args.recipe is None and args.script is not None:
                config = Config.from_dict(script_recipe(args.script), overrides=every)
                configs.append(config.with_schema(schema) if schema else config)
            elif args.recipe is not None:
                configs.append(Config.from_recipe(Path(args.recipe), every, schema=schema))
            else:
                with demo_recipe() as path:
                    configs.append(Config.from_recipe(path, every, schema=schema))
        except ConfigError as exc:
            return exc
    return configs


def _command(args: argparse.Namespace, sweep_id: str, member: _Member) -> list[str]:
    command = [sys.executable, "-m", "orchestrator_fsm", "run"]
    if args.recipe is not None:
        command.append(args.recipe)
    for override in [*args.set_overrides, *member.overrides]:
        command += ["--set", override]
    if args.entry is not None:
        command += ["--entry", args.entry]
    if args.script is not None:
        command += ["--script", args.script]
    if args.debug:
        command.append("--debug")
    command += ["--sweep-member", f"{sweep_id}:{member.number}"]
    return command if args.script_args is None else [*command, "--", *args.script_args]


def _find_run(member: _Member, sweep_id: str, since: float) -> RunRecord | None:
    """The run directory member ``member`` of sweep ``sweep_id`` made, if any."""
    from orchestrator_fsm.lifecycle.record import read_run

    for root in member_run_dirs(member.output_dir, since):
        try:
            record = read_run(Path(os.path.abspath(root)), journal=False)
        except (OSError, ValueError):
            continue
        if record.sweep == sweep_id and record.sweep_member == member.number:
            return record
    return None


class _Sweep:
    """The members of one sweep, run ``jobs`` at a time, and its record."""

    def __init__(
        self, args: argparse.Namespace, sweep_id: str, folder: Path, members: list[_Member]
    ) -> None:
        self.args = args
        self.id = sweep_id
        self.folder = folder
        self.members = members
        self.signum: int | None = None
        self.created_at = _now()
        self.since = time.time() - 1.0

    def record(self, status: str) -> dict[str, Any]:
        return {
            "sweep": self.id,
            "status": status,
            "created_at": self.created_at,
            "ended_at": None if status == RUNNING else _now(),
            "recipe": None if self.args.recipe is None else os.path.abspath(self.args.recipe),
            "entry": self.args.entry,
            "overrides": self.args.set_overrides,
            "swept": self.args.bare,
            "jobs": self.args.jobs,
            "fail_fast": self.args.fail_fast,
            "members": [member.to_json() for member in self.members],
        }

    def save(self, status: str = RUNNING) -> None:
        try:
            write_sweep_record(self.folder, self.record(status))
        except OSError as exc:
            print(f"orchestrator-fsm: could not write the sweep record ({exc})", file=sys.stderr)

    def running(self) -> list[_Member]:
        return [member for member in self.members if member.status == RUNNING]

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        for member in self.running():
            if member.process is not None and member.process.poll() is None:
                with contextlib.suppress(OSError):
                    os.kill(member.process.pid, signum)

    def start(self, member: _Member, out: Console) -> None:
        member.stream = member.log.open("wb")
        member.process = subprocess.Popen(
            _command(self.args, self.id, member),
            stdin=subprocess.DEVNULL,
            stdout=member.stream,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C at the terminal reaches the sweep, which passes
            # it on, rather than every member at once behind its back.
            start_new_session=True,
        )
        member.status, member.started, member.started_at = RUNNING, time.monotonic(), _now()
        say(out, f"[{member.number}/{len(self.members)}] started: {' '.join(member.overrides)}")

    def finish(self, member: _Member, code: int, out: Console) -> None:
        assert member.started is not None
        member.exit_code = code
        member.status = _member_status(code)
        member.duration_s = round(time.monotonic() - member.started, 3)
        member.ended_at = _now()
        if member.stream is not None:
            member.stream.close()
        member.run = _find_run(member, self.id, self.since)
        style = "green" if member.status == COMPLETED else "red"
        say(
            out,
            f"[{member.number}/{len(self.members)}] {member.status} "
            f"in {member.duration_s:.1f}s: {' '.join(member.overrides)}",
            style,
        )
        self.save()

    def run(self, out: Console) -> None:
        pending = list(self.members)
        failed = False
        while pending or self.running():
            stop = self.signum is not None or (failed and self.args.fail_fast)
            while pending and not stop and len(self.running()) < self.args.jobs:
                self.start(pending.pop(0), out)
            for member in self.running():
                assert member.process is not None
                code = member.process.poll()
                if code is not None:
                    self.finish(member, code, out)
                    failed = failed or member.status == FAILED
            if stop and pending:
                for member in pending:
                    member.status = "skipped" if self.signum is None else "not started"
                pending = []
                self.save()
            if self.running():
                time.sleep(_POLL_S)

    def status(self) -> str:
        statuses = {member.status for member in self.members}
        if self.signum is not None or INTERRUPTED in statuses:
            return INTERRUPTED
        if statuses == {COMPLETED}:
            return COMPLETED
        return FAILED


def _summary_table(sweep: _Sweep) -> Any:
    from rich.table import Table
    from rich.text import Text

    from orchestrator_fsm.cli.inspect import format_values

    table = Table(title=f"sweep {sweep.id}: {sweep.status()}")
    for column in ("#", "overrides", "status", "duration", "metrics"):
        table.add_column(column, overflow="fold")
    for member in sweep.members:
        run = member.run
        metrics = ""
        if run is not None:
            metrics = format_values(run.summary) or format_values(
                {name: item.last for name, item in run.metrics.items()}
            )
        table.add_row(
            str(member.number),
            Text(" ".join(member.overrides)),
            Text(member.status, style="green" if member.status == COMPLETED else "red"),
            "" if member.duration_s is None else f"{member.duration_s:.1f}s",
            Text(metrics),
        )
    return table


def cmd_sweep(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Run every member of the sweep ``args.bare`` describes; the exit code."""
    args.set_overrides = args.overrides[: len(args.overrides) - len(args.bare)]
    if args.resume is not None:
        say(err, "error: --resume continues one run; it cannot be combined with --multirun", "red")
        return EXIT_USAGE
    if args.jobs < 1:
        say(err, f"error: -j/--jobs must be at least 1, got {args.jobs}", "red")
        return EXIT_USAGE
    try:
        members = expand_sweep(args.bare)
    except ValueError as exc:
        say(err, f"error: {exc}", "red")
        return EXIT_USAGE
    from orchestrator_fsm.cli.what_runs import chosen_entry, config_without_schema
    from orchestrator_fsm.entry import entry_schema, entry_search_path, resolve_entry

    # What the members run, as `run` chooses it (--script, --entry, the recipe's entry).
    every = argparse.Namespace(**{**vars(args), "overrides": args.set_overrides})
    loaded = config_without_schema(every, err)
    if isinstance(loaded, int):
        return loaded
    chosen = chosen_entry(args, loaded)
    if isinstance(chosen, str):
        say(err, f"error: {chosen}", "red")
        return EXIT_USAGE
    spec, script_args = chosen
    with entry_search_path(spec):
        try:
            schema = {} if script_args is not None else entry_schema(resolve_entry(spec), spec)
        except EntryPointError as exc:
            say(err, f"error: {exc}", "red")
            return EXIT_USAGE
        configs = _configs(args, members, schema)
    if isinstance(configs, ConfigError):
        print_config_error(err, configs, args.recipe)
        return EXIT_USAGE
    sweep_id = new_sweep_id()
    folder = sweep_dir(configs[0].telemetry.output_dir, sweep_id)
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        say(err, f"error: cannot create the sweep folder {folder}: {exc}", "red")
        return EXIT_FAILURE
    sweep = _Sweep(
        args,
        sweep_id,
        folder,
        [
            _Member(
                number=number,
                overrides=overrides,
                output_dir=cfg.telemetry.output_dir,
                log=folder / f"member-{number}.log",
            )
            for number, (overrides, cfg) in enumerate(zip(members, configs, strict=True), 1)
        ],
    )
    say(out, f"recipe: {configs[0].source or recipe_label(args.recipe)}")
    say(out, f"entry: {spec}")
    say(out, f"sweep {sweep_id}: {len(members)} members, {min(args.jobs, len(members))} at once")
    sweep.save()
    previous = {signum: signal.signal(signum, sweep.on_signal) for signum in _FORWARDED}
    try:
        sweep.run(out)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    status = sweep.status()
    sweep.save(status)
    out.print(_summary_table(sweep))
    say(out, f"sweep record: {folder / SWEEP_FILE}")
    say(out, f"status: {status}", "green" if status == COMPLETED else "red")
    if sweep.signum is not None:
        return 128 + sweep.signum
    return EXIT_OK if status == COMPLETED else EXIT_FAILURE
