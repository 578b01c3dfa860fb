"""``orchestrator-fsm runs``: the runs of an output directory, newest first, with their true status.

Each run directory's ``run.json`` is read (and nothing else, but the other ranks'
records of a multi-process job) into a :class:`ListedRun`; :func:`list_runs` finds
them, :class:`RunFilter` picks them, the ``format_*`` functions turn them into a
table or JSON and print nothing, :func:`cmd_runs` writes them out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from orchestrator_fsm.cli._shared import EXIT_OK, EXIT_USAGE, say
from orchestrator_fsm.cli.runs_args import parse_since
from orchestrator_fsm.layout import expand_output_dir
from orchestrator_fsm.lifecycle.metrics import json_number, json_numbers
from orchestrator_fsm.status import COMPLETED, REFUSED, RUNNING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from orchestrator_fsm.lifecycle.record import RunRecord

__all__ = [
    "ListedRun",
    "RunFilter",
    "Skipped",
    "cmd_runs",
    "entry_of",
    "format_runs_json",
    "format_runs_table",
    "job_of",
    "list_runs",
    "parse_since",
]

#: How many metrics one row of the table shows (``--json`` has them all).
_METRICS_SHOWN: Final = 3

_STYLES: Final = {COMPLETED: "green", RUNNING: "yellow", REFUSED: "magenta"}


@attrs.frozen
class ListedRun:
    """One run of the listing: its record and its true status (``infer_status``)."""

    record: RunRecord
    status: str


@attrs.frozen
class Skipped:
    """A folder of the output directory that is not a readable run, and why."""

    path: Path
    reason: str


@attrs.frozen
class RunFilter:
    """Which runs to list: any of ``statuses`` (all when empty), a run id containing
    ``name`` (case-insensitive), started at or after ``since``."""

    statuses: frozenset[str] = frozenset()
    name: str | None = None
    since: datetime | None = None

    def admits_record(self, record: RunRecord) -> bool:
        """Whether ``record`` passes the filters that need no status."""
        if self.name is not None and self.name.lower() not in record.run_id.lower():
            return False
        if self.since is not None:
            return record.started_at is not None and _aware(record.started_at) >= self.since
        return True

    def admits_status(self, status: str) -> bool:
        return not self.statuses or status in self.statuses


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def list_runs(
    output_dir: Path, run_filter: RunFilter | None = None
) -> tuple[list[ListedRun], list[Skipped]]:
    """The runs directly under ``output_dir`` that pass ``run_filter``, newest start
    first, and the folders that hold no readable ``run.json``. Hidden entries (the
    ``.jobs`` index among them) and files are not looked at."""
    from orchestrator_fsm.lifecycle.record import infer_status, read_run

    chosen = run_filter or RunFilter()
    runs: list[ListedRun] = []
    skipped: list[Skipped] = []
    now = datetime.now(timezone.utc)
    with os.scandir(output_dir) as entries:
        folders = [e.path for e in entries if not e.name.startswith(".") and e.is_dir()]
    for folder in folders:
        root = Path(folder)
        try:
            record = read_run(root, journal=False)
        except FileNotFoundError:
            skipped.append(Skipped(root, "no run.json"))
            continue
        except (OSError, ValueError) as exc:
            skipped.append(Skipped(root, str(exc)))
            continue
        if not chosen.admits_record(record):
            continue
        status = infer_status(record, now)
        if chosen.admits_status(status):
            runs.append(ListedRun(record, status))
    far_past = datetime.min.replace(tzinfo=timezone.utc)
    runs.sort(
        key=lambda run: (_aware(run.record.started_at or far_past), run.record.run_id),
        reverse=True,
    )
    return runs, skipped


def entry_of(record: RunRecord) -> str:
    """What the run ran: the ``--entry`` it was given, ``bundled demo`` for
    ``orchestrator-fsm run`` without one, else the script or module that started it."""
    argv = list(record.argv)
    for index, arg in enumerate(argv):
        if arg == "--entry" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--entry="):
            return arg.partition("=")[2]
    ran_cli = record.entry_module in ("orchestrator_fsm", "orchestrator_fsm.__main__") or (
        bool(argv) and Path(argv[0]).name == "orchestrator-fsm"
    )
    if ran_cli and "run" in argv[1:]:
        return "bundled demo"
    if record.entry_module:
        return f"-m {record.entry_module}"
    return Path(record.entry_point).name if record.entry_point else "-"


def _key_metrics(record: RunRecord) -> dict[str, float]:
    """The summary when the run logged one, else each metric's last value."""
    if record.summary:
        return dict(record.summary)
    return {name: item.last for name, item in record.metrics.items()}


def job_of(record: RunRecord) -> str | None:
    """The scheduler's job the run ran in, as its users name it (``slurm 28``,
    ``slurm 27_1`` for task 1 of array 27); None outside one."""
    job = record.scheduler
    return None if job is None else f"{job.scheduler} {job.label}"


def _duration(run: ListedRun, now: datetime) -> str:
    from orchestrator_fsm.cli.inspect import format_seconds

    record = run.record
    if record.duration_s is not None:
        return format_seconds(record.duration_s)
    if run.status == RUNNING and record.started_at is not None:
        return f"{format_seconds((now - _aware(record.started_at)).total_seconds())} so far"
    return "-"


def _started(record: RunRecord) -> str:
    if record.started_at is None:
        return "-"
    return _aware(record.started_at).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _metrics_cell(record: RunRecord) -> str:
    from orchestrator_fsm.cli.inspect import format_values

    metrics = _key_metrics(record)
    shown = dict(list(metrics.items())[:_METRICS_SHOWN])
    more = len(metrics) - len(shown)
    return (format_values(shown) + (f", +{more} more" if more else "")) or "-"


_HEADERS: Final = (
    "run id",
    "status",
    "attempts",
    "started",
    "duration",
    "job",
    "key metrics",
    "entry",
)
#: The column shown only when a listed run ran in a scheduler's job.
_JOB_HEADER: Final = "job"
_RIGHT_ALIGNED: Final = frozenset({"attempts", "duration"})
_GAP: Final = "  "


def format_runs_table(runs: Sequence[ListedRun], now: datetime | None = None) -> Text:
    """One line per run under a header: id, status, attempts, start (local time),
    duration, key metrics (the summary, else the last values), entry.

    Columns are as wide as their widest cell and nothing is cut or wrapped (a run id
    stays whole for copying); print it with ``soft_wrap=True``. Plain text with a
    style per status, not a rich ``Table``: it lays out 10,000 rows in a blink.
    """
    from rich.text import Text

    moment = now or datetime.now(timezone.utc)
    with_job = any(run.record.scheduler is not None for run in runs)
    headers = tuple(h for h in _HEADERS if with_job or h != _JOB_HEADER)
    rows = [
        (
            run.record.run_id,
            run.status,
            str(len(run.record.attempts) or 1),
            _started(run.record),
            _duration(run, moment),
            *((job_of(run.record) or "-",) if with_job else ()),
            _metrics_cell(run.record),
            entry_of(run.record),
        )
        for run in runs
    ]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]

    def aligned(cells: Sequence[str]) -> list[str]:
        last = len(cells) - 1
        return [
            cell
            if i == last
            else cell.rjust(widths[i])
            if headers[i] in _RIGHT_ALIGNED
            else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]

    text = Text(_GAP.join(aligned(headers)).rstrip(), style="bold")
    status_column = headers.index("status")
    for row, run in zip(rows, runs, strict=True):
        cells = aligned(row)
        text.append("\n")
        text.append(_GAP.join(cells[:status_column]) + _GAP)
        text.append(cells[status_column], style=_STYLES.get(run.status, "red"))
        text.append((_GAP + _GAP.join(cells[status_column + 1 :])).rstrip())
    return text


def _listed_json(run: ListedRun) -> dict[str, Any]:
    record = run.record
    return {
        "run_id": record.run_id,
        "root": str(record.root.absolute()),
        "status": run.status,
        "recorded_status": record.status,
        "state": record.state,
        "attempts": len(record.attempts) or 1,
        "started_at": None if record.started_at is None else record.started_at.isoformat(),
        "ended_at": None if record.ended_at is None else record.ended_at.isoformat(),
        "duration_s": record.duration_s,
        "metrics": {name: json_number(item.last) for name, item in record.metrics.items()},
        "summary": json_numbers(record.summary),
        "entry": entry_of(record),
        "error": None if record.error is None else record.error.to_json(),
        "failed_rank": record.failed_rank,
        "interruption": None if record.interruption is None else record.interruption.to_json(),
        "scheduler": None if record.scheduler is None else record.scheduler.to_json(),
        "host": record.host,
        "pid": record.pid,
    }


def format_runs_json(runs: Iterable[ListedRun]) -> str:
    """The listing as a JSON array, one object per run, newest first."""
    return json.dumps([_listed_json(run) for run in runs], indent=2, sort_keys=True) + "\n"


def _default_output_dir() -> Path:
    from orchestrator_fsm.config.sections import TelemetryConfig

    return TelemetryConfig().output_dir


def cmd_runs(args: argparse.Namespace, out: Console, err: Console) -> int:
    """List the runs of ``args.output_dir`` (as JSON with ``args.json``); the exit code."""
    # Relative paths stay relative in what is shown.
    output_dir = expand_output_dir(args.output_dir or _default_output_dir())
    if not output_dir.is_dir():
        say(
            err,
            f"error: {output_dir} is not a directory; expected an output directory "
            "(telemetry.output_dir) that holds run directories",
            "red",
        )
        return EXIT_USAGE
    run_filter = RunFilter(statuses=frozenset(args.status or ()), name=args.name, since=args.since)
    runs, skipped = list_runs(output_dir, run_filter)
    unreadable = [item for item in skipped if item.reason != "no run.json"]
    for item in unreadable:
        say(err, f"warning: skipped {item.path}: {item.reason}", "yellow")
    if args.json:
        sys.stdout.write(format_runs_json(runs))
        sys.stdout.flush()
        return EXIT_OK
    if runs:
        table = format_runs_table(runs)
        if out.is_terminal:
            out.print(table, soft_wrap=True, highlight=False)
        else:  # no styles to draw: skip rich's rendering of every line
            out.file.write(table.plain + "\n")
    filtered = " matching the filters" if (args.status or args.name or args.since) else ""
    count = f"{len(runs)} run{'s' * (len(runs) != 1)}{filtered} in {output_dir}"
    not_runs = len(skipped) - len(unreadable)
    if not_runs:
        count += f" ({not_runs} folder{'s' * (not_runs != 1)} without run.json left out)"
    say(out, count, "dim")
    return EXIT_OK
