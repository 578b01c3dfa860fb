"""``orchestrator-fsm inspect``: a run's status, lifecycle timeline, error and files.

The run is read once into a :class:`~orchestrator_fsm.lifecycle.record.RunRecord` and a
:class:`RunFiles`; the ``format_*`` functions turn those into rich renderables or text
and print nothing; :func:`print_run` and :func:`print_run_json` write them out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from orchestrator_fsm.cli._shared import EXIT_OK, EXIT_USAGE, say
from orchestrator_fsm.status import COMPLETED, CRASHED, REFUSED, RUNNING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from orchestrator_fsm.lifecycle.machine import TransitionRecord
    from orchestrator_fsm.lifecycle.record import RunRecord

__all__ = [
    "RunFiles",
    "cmd_inspect",
    "format_error",
    "format_files",
    "format_json",
    "format_seconds",
    "format_status",
    "format_summary",
    "format_timeline",
    "format_values",
    "print_run",
    "print_run_json",
]

#: How many files of one run sub-folder ``inspect`` lists before summarising the rest.
_FILES_SHOWN: Final = 12


class _UsageError(Exception):
    """A problem with what the user asked for: message printed, exit code 2."""


@attrs.frozen
class RunFiles:
    """What a run directory holds, read from the directory itself.

    ``records``: whether ``run.json`` and the journal are present, by file name;
    ``folders``: the files in each sub-folder (the run's own first, in creation order,
    then any other: ``ranks/``, ``tensorboard/``, ...), relative to it, sorted;
    ``others``: the other files at the top of the run directory (``metrics.jsonl``,
    ``reruns.jsonl``, ...), sorted. Hidden names (``.run.json.reserve``) are left out.
    """

    records: dict[str, bool]
    folders: dict[str, list[str]]
    others: list[str] = attrs.field(factory=list)


def _load_run(run_dir: Path) -> RunRecord:
    from orchestrator_fsm.layout import RUN_FILE
    from orchestrator_fsm.lifecycle.record import read_run

    if not run_dir.is_dir():
        raise _UsageError(f"{run_dir} is not a directory; expected a run directory")
    if not (run_dir / RUN_FILE).is_file():
        hint = ""
        if _holds_runs(run_dir):
            hint = f"; it holds run directories: list them with `orchestrator-fsm runs {run_dir}`"
        raise _UsageError(
            f"{run_dir} holds no {RUN_FILE}; expected a run directory "
            f"(<telemetry.output_dir>/<run_id>) written by orchestrator-fsm{hint}"
        )
    try:
        return read_run(run_dir)
    except (OSError, ValueError) as exc:
        raise _UsageError(f"cannot read {run_dir / RUN_FILE}: {exc}") from exc


def _holds_runs(folder: Path) -> bool:
    """Whether ``folder`` looks like an output directory: a sub-folder has a run.json."""
    from orchestrator_fsm.layout import RUN_FILE

    try:
        return any((child / RUN_FILE).is_file() for child in folder.iterdir())
    except OSError:
        return False


def _run_files(run_dir: Path) -> RunFiles:
    from orchestrator_fsm.layout import JOURNAL_FILE, RUN_FILE, RUN_SUBDIRECTORIES

    records = {name: (run_dir / name).is_file() for name in (RUN_FILE, JOURNAL_FILE)}
    try:
        entries = [entry for entry in run_dir.iterdir() if not entry.name.startswith(".")]
    except OSError:
        entries = []
    order = {name: index for index, name in enumerate(RUN_SUBDIRECTORIES)}
    subfolders = sorted(
        (entry for entry in entries if entry.is_dir()),
        key=lambda entry: (order.get(entry.name, len(order)), entry.name),
    )
    folders = {
        folder.name: sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        for folder in subfolders
    }
    others = sorted(
        entry.name for entry in entries if entry.is_file() and entry.name not in records
    )
    return RunFiles(records=records, folders=folders, others=others)


def cmd_inspect(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Show the run in ``args.run_dir`` (as JSON with ``args.json``); the exit code."""
    run_dir = Path(args.run_dir)
    try:
        run = _load_run(run_dir)
    except _UsageError as exc:
        say(err, f"error: {exc}", "red")
        return EXIT_USAGE
    _reconcile_trackers(run, err)
    files = _run_files(run_dir)
    if args.json:
        print_run_json(run, files)
    else:
        print_run(out, run, files)
    return EXIT_OK


def _reconcile_trackers(run: RunRecord, err: Console) -> None:
    """A crashed run whose record names an MLflow run: end that run as FAILED when it
    is still RUNNING. mlflow is imported only then, and only when it is installed."""
    import importlib.util

    if "mlflow" not in run.trackers or run.effective_status != CRASHED:
        return
    if importlib.util.find_spec("mlflow") is None:
        return
    from orchestrator_fsm.mlflow_observer import reconcile_record

    try:
        ended = reconcile_record(run)
    except Exception as exc:  # the tracker is unreachable: inspect shows the run anyway
        say(err, f"note: could not reconcile the MLflow run of {run.root} ({exc})", "yellow")
        return
    if ended is not None:
        link = run.trackers["mlflow"]
        say(err, f"mlflow: run {link['run_id']} was still RUNNING; set {ended}", "yellow")


def print_run_json(run: RunRecord, files: RunFiles) -> None:
    """Write :func:`format_json` to stdout, unstyled, for other programs to read."""
    sys.stdout.write(format_json(run, files))
    sys.stdout.flush()


def print_run(out: Console, run: RunRecord, files: RunFiles) -> None:
    """Print the summary, the timeline, the failed step (if any) and the files."""
    out.print(format_summary(run))
    out.print(format_timeline(run.transitions, run))
    error = format_error(run)
    if error is not None:
        # Wrapped at word boundaries to the console's width, not cut into a column.
        out.print(error, highlight=False)
    out.print(format_files(files))


def format_json(run: RunRecord, files: RunFiles) -> str:
    """The record, its effective status, its transitions and its files as one JSON object."""
    payload = {
        **run.to_json(),
        "effective_status": run.effective_status,
        "transitions": [record.to_json() for record in run.transitions],
        "ranks": [rank.to_json() for rank in run.ranks],
        # "." lists the files at the top of the run directory.
        "files": {".": [*(name for name, on in files.records.items() if on), *files.others]}
        | files.folders,
    }
    return json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"


def format_seconds(seconds: object) -> str:
    """A duration for people: milliseconds below one second, ``-`` when unknown."""
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    from orchestrator_fsm.phases.timing import format_duration

    return format_duration(float(seconds))


def format_status(run: RunRecord) -> Text:
    """The effective status, coloured; says why when it differs from ``run.json``'s."""
    from rich.text import Text

    status = run.effective_status
    style = {COMPLETED: "green", RUNNING: "yellow", REFUSED: "magenta"}.get(status, "red")
    text = Text(status, style=f"bold {style}")
    if status != run.status:
        text.append(
            f" (run.json says {run.status!r}, but process {run.pid} is gone from {run.host})",
            style="dim",
        )
    return text


def _or_dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def format_summary(run: RunRecord) -> Table:
    """One row per field of the record: id, status, state, times, host, rank, device."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"run {run.run_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    started = None if run.started_at is None else run.started_at.isoformat()
    ended = None if run.ended_at is None else run.ended_at.isoformat()
    beat = "-"
    if run.heartbeat_at is not None:
        beat = f"{run.heartbeat_at.isoformat()} (every {format_seconds(run.heartbeat_s)})"
    rows: list[tuple[str, str | Text]] = [
        ("run id", run.run_id),
        ("status", format_status(run)),
        ("state", _or_dash(run.state)),
        ("started", _or_dash(started)),
        ("ended", _or_dash(ended)),
        ("duration", format_seconds(run.duration_s)),
        ("heartbeat", beat),
        ("attempts", _attempts(run)),
        ("other ranks", _ranks(run)),
        ("host / pid", f"{_or_dash(run.host)} / {_or_dash(run.pid)}"),
        ("rank / world size", f"{_or_dash(run.rank)} / {_or_dash(run.world_size)}"),
        ("device", _or_dash(run.device)),
        ("summary", format_values(run.summary) or "-"),
        ("last metrics", _last_metrics(run) or "-"),
        ("entry", format_entry(run)),
        ("command", _command(run)),
        ("root", str(run.root)),
    ]
    if run.scheduler is not None:
        job = run.scheduler
        rows.insert(2, ("job", f"{job.scheduler} job {job.label}"))
    if run.sweep is not None:
        rows.insert(-1, ("sweep", f"{run.sweep} (member {_or_dash(run.sweep_member)})"))
    if run.rerun_of is not None:
        rows.insert(-1, ("rerun of", run.rerun_of))
    if run.determinism_changes:
        changed = ", ".join(
            f"{name} {change.get('applied')} -> {change.get('at_end')}"
            for name, change in run.determinism_changes.items()
        )
        rows.insert(-1, ("changed by the program", Text(changed, style="yellow")))
    for field, value in rows:
        table.add_row(field, value if isinstance(value, Text) else Text(value))
    return table


def format_entry(run: RunRecord) -> str:
    """The pipeline as it was named: the ``--entry`` given, ``python -m`` its module, or
    the script that started the run."""
    if run.entry:
        return run.entry
    if run.entry_module:
        return f"python -m {run.entry_module}"
    return _or_dash(run.entry_point)


def _command(run: RunRecord) -> str:
    """The command line that started the run, its program as recorded (``orchestrator-fsm``
    for this package's command); secrets were redacted when it was recorded."""
    if not run.argv:
        return "-"
    program = run.entry_point or run.argv[0]
    return shlex.join([program, *run.argv[1:]])


def format_values(values: Mapping[str, float]) -> str:
    """``final_acc=0.93, loss=0.3``: names and numbers, in the order they were logged."""
    return ", ".join(f"{name}={value:.6g}" for name, value in values.items())


def _last_metrics(run: RunRecord) -> str:
    """``loss=0.3 (step 20), acc=0.91 (step 20)``: each metric's last value."""
    return ", ".join(
        f"{name}={item.last:.6g}" + ("" if item.step is None else f" (step {item.step})")
        for name, item in run.metrics.items()
    )


def _attempts(run: RunRecord) -> str:
    """``1 interrupted (preempted), 2 running``: each attempt with how it ended."""
    parts = []
    for attempt in run.attempts:
        reason = f" ({_short_reason(attempt.reason)})" if attempt.reason else ""
        parts.append(f"{attempt.number} {attempt.status}{reason}")
    return ", ".join(parts) or "-"


def _short_reason(reason: str) -> str:
    """An attempt's reason cut to what a list shows: the rank that ended it, then the
    error's type or the signal (the whole is printed below the timeline, and in
    ``--json``): ``rank 1: ValueError``, ``SIGTERM``."""
    who = ""
    if reason.startswith("rank "):
        who, _, reason = reason.partition(": ")
        who += ": "
    return who + reason.partition(";")[0].partition(":")[0]


def _ranks(run: RunRecord) -> str:
    """``1 completed, 2 failed: ValueError: ...``: every other rank's own status."""
    parts = []
    for rank in run.ranks:
        error = f": {rank.error}" if rank.error is not None else ""
        parts.append(f"{rank.rank} {rank.effective_status}{error}")
    return ", ".join(parts) or "-"


def _clock_time(moment: datetime) -> str:
    """``HH:MM:SS.mmm`` of a timestamp (the date is in the run summary)."""
    return moment.strftime("%H:%M:%S.%f")[:-3]


def format_timeline(transitions: Sequence[TransitionRecord], run: RunRecord | None = None) -> Table:
    """One row per transition: when, from and to which state, its step, duration, result;
    and a ``pipeline`` row for the caller's own work between READY and cleanup. Errors
    are only named here (the whole message is :func:`format_error`'s), so the columns
    stay whole at 80 characters."""
    from rich.table import Table
    from rich.text import Text

    from orchestrator_fsm.lifecycle.record import PIPELINE_STEP, pipeline_spans
    from orchestrator_fsm.lifecycle.table import LifecycleState

    # No rules and no row numbers: the five columns then fit in 80 characters.
    table = Table(title="lifecycle timeline", box=None, header_style="bold underline")
    table.add_column("at (UTC)", no_wrap=True)
    table.add_column("transition", no_wrap=True)
    table.add_column("step", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    spans = {span.after: span for span in pipeline_spans(transitions)}
    last_span = max(spans, default=None)
    for index, record in enumerate(transitions):
        table.add_row(
            _clock_time(record.started_at),
            Text(f"{record.source.value} -> {record.dest.value}"),
            Text(record.step),
            format_seconds(record.duration_s),
            _result(record.ok, record.error),
        )
        span = spans.get(index)
        if span is not None:
            error = run.error if run is not None and index == last_span else None
            failed = error is not None and error.step == PIPELINE_STEP
            table.add_row(
                _clock_time(span.started_at),
                Text(f"in {record.dest.value}", style="italic"),
                Text(PIPELINE_STEP, style="bold"),
                format_seconds(span.duration_s),
                _result(not failed, str(error) if failed else None),
            )
    last = transitions[-1] if transitions else None
    if (
        last is not None
        and last.ok
        and last.dest in (LifecycleState.READY, LifecycleState.REPORTED)
        and run is not None
        and run.effective_status == RUNNING
    ):
        table.add_row(
            "-",
            Text(f"in {last.dest.value}", style="italic"),
            Text(PIPELINE_STEP, style="bold"),
            "-",
            Text(RUNNING, style="yellow"),
        )
    if not transitions:
        table.add_row("-", Text("no transitions recorded"), "-", "-", "-")
    return table


def _result(ok: bool, error: str | None) -> Text:
    """``ok``, ``error`` (its message is below the table), or the signal that
    interrupted the step (``SIGINT``)."""
    from rich.text import Text

    if ok:
        return Text("ok", style="green")
    kind, _, message = (error or "").partition(":")
    if kind in _INTERRUPTS:
        return Text(_signal_name(message.strip()).split()[0], style="red")
    return Text("error", style="red")


#: The error types that mean a signal (or Ctrl-C) ended the run, not a failure.
_INTERRUPTS: Final = frozenset({"KeyboardInterrupt", "RunInterrupted"})


def _signal_name(message: str) -> str:
    """The signal an interrupt's message names (``SIGTERM``); Python raises a bare
    ``KeyboardInterrupt`` for SIGINT (Ctrl-C)."""
    return message if message.startswith("SIG") else "SIGINT (Ctrl-C)"


def format_error(run: RunRecord) -> Text | None:
    """What ended the run (the step that failed and its error, who held the run lock
    for a refused run, or the signal that interrupted it and in which step), then any
    other error a transition recorded (an undo that failed); None when there is none.
    Printed as is, it wraps at word boundaries to the console's width."""
    from rich.text import Text

    lines = []
    error = run.error
    if error is not None and run.status == REFUSED:
        lines.append(f"refused at the run lock: {error.type}: {error.message}")
    elif error is not None and error.type in _INTERRUPTS:
        line = f"interrupted by {_signal_name(error.message)} in step {error.step}"
        evidence = None if run.interruption is None else run.interruption.evidence
        # What told more than the signal, and so made the status what it is.
        lines.append(line if evidence is None else f"{line}: {run.status} ({evidence})")
    elif error is not None:
        lines.append(f"failed step: {error.step}: {error}")
    for record in run.transitions:
        message = record.error or ""
        if record.ok or not message or (error is not None and message == str(error)):
            continue
        if message.partition(":")[0] not in _INTERRUPTS:
            lines.append(f"error in step {record.step}: {message}")
    return Text("\n".join(lines), "red") if lines else None


def format_files(files: RunFiles) -> Table:
    """Whether the record files are present, the run directory's other files, and the
    first files of each sub-folder."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="files")
    table.add_column("path", no_wrap=True)
    table.add_column("contents", overflow="fold")
    for name, present in files.records.items():
        table.add_row(Text(name), Text("present" if present else "missing"))
    for name in files.others:
        table.add_row(Text(name), Text("present"))
    for folder, names in files.folders.items():
        shown = ", ".join(names[:_FILES_SHOWN]) or "(empty)"
        if len(names) > _FILES_SHOWN:
            shown += f", ... and {len(names) - _FILES_SHOWN} more"
        table.add_row(Text(f"{folder}/"), Text(shown))
    return table
