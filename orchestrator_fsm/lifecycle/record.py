"""The run record as data: ``run.json``, ``lifecycle.jsonl`` and the ranks' records, read back.

``read_run(root)`` gives a frozen ``RunRecord``: rank 0's record of the run (its
attempts, its transitions) with the records other ranks keep in ``ranks/``.
``infer_status`` is the one place that decides what a record's status truly is: a
``running`` record whose process is gone is ``crashed``, and a job is as bad as its
worst rank. ``refused`` is a run that never ran: another launch of it held the run
lock. The writer is ``lifecycle/recorder.py``.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from orchestrator_fsm._system import boot_id, pid_exists, process_start_ticks
from orchestrator_fsm.errors import LockContendedError
from orchestrator_fsm.layout import (
    JOURNAL_FILE,
    RANKS_DIR,
    RUN_FILE,
    metrics_file,
)
from orchestrator_fsm.lifecycle.ending import Interruption, SchedulerJob
from orchestrator_fsm.lifecycle.machine import TransitionRecord
from orchestrator_fsm.lifecycle.metrics import (
    effective_lines,
    json_number,
    json_numbers,
    last_values,
    number_from_json,
    read_lines,
)
from orchestrator_fsm.lifecycle.table import MACHINE_STEPS, LifecycleState
from orchestrator_fsm.status import (
    COMPLETED,
    CRASHED,
    FAILED,
    INTERRUPTED,
    INTERRUPTIONS,
    REFUSED,
    RUNNING,
    WORST_FIRST,
)

if TYPE_CHECKING:
    from orchestrator_fsm.lifecycle.machine import LifecycleMachine

__all__ = [
    "PIPELINE_STEP",
    "Attempt",
    "AttemptInfo",
    "ErrorSummary",
    "LastMetric",
    "PipelineSpan",
    "RunRecord",
    "infer_status",
    "job_signal_at",
    "outcome_of",
    "pipeline_spans",
    "read_ranks",
    "read_run",
    "run_status",
    "stale_after",
    "status_for",
]

#: The name errors raised by the caller's own work (the with-block) are recorded under.
PIPELINE_STEP: Final = "pipeline"


@attrs.frozen
class ErrorSummary:
    """The error that ended a run: its type, its message, the step it came from and
    where it was raised (``file:line in function`` of the innermost frame)."""

    type: str
    message: str
    step: str
    where: str | None = None

    @classmethod
    def of(cls, exc: BaseException, step: str) -> ErrorSummary:
        return cls(type=type(exc).__name__, message=str(exc), step=step, where=_raised_at(exc))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ErrorSummary:
        return cls(
            type=str(data.get("type") or "Error"),
            message=str(data.get("message") or ""),
            step=str(data.get("step") or "?"),
            where=_optional_str(data.get("where")),
        )

    def to_json(self) -> dict[str, str | None]:
        return {"type": self.type, "message": self.message, "step": self.step, "where": self.where}

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


def _raised_at(exc: BaseException) -> str | None:
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{code.co_filename}:{tb.tb_lineno} in {code.co_name}"


@attrs.frozen
class Attempt:
    """One launch of a run: the first, or a restart or requeue that reopened it."""

    number: int
    restart_count: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    status: str = RUNNING
    reason: str | None = None
    """Why this attempt ended early (the signal and what told more, ``crashed``, the
    error; ``rank N: `` first when another rank's ended it), if it did. Written when
    the attempt ends (or, for one that crashed, when the next one starts); never
    rewritten."""
    pid: int | None = None
    host: str | None = None
    config_hash: str | None = None
    """The hash of the config this attempt ran (None in records of older versions):
    ``run --resume --force`` may continue a run with another config."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(
            number=_optional_int(data.get("number")) or 1,
            restart_count=_optional_int(data.get("restart_count")) or 0,
            started_at=_timestamp(data.get("started_at")),
            ended_at=_timestamp(data.get("ended_at")),
            status=str(data.get("status") or "unknown"),
            reason=_optional_str(data.get("reason")),
            pid=_optional_int(data.get("pid")),
            host=_optional_str(data.get("host")),
            config_hash=_optional_str(data.get("config_hash")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "restart_count": self.restart_count,
            "started_at": None if self.started_at is None else self.started_at.isoformat(),
            "ended_at": None if self.ended_at is None else self.ended_at.isoformat(),
            "status": self.status,
            "reason": self.reason,
            "pid": self.pid,
            "host": self.host,
            "config_hash": self.config_hash,
        }


@attrs.frozen
class AttemptInfo:
    """What a run's code may know of the attempt it runs in (``orch.attempt``).

    ``number`` counts from 1 (the run's first launch); ``restart_count`` is the
    launcher's count (torchrun's restarts, SLURM's requeues) when this attempt
    started; ``resumed`` is True when this attempt continues a run directory an
    earlier attempt made (``run --resume``, a restart, a requeue), so there may be
    checkpoints to load. ``previous_status`` and ``previous_reason`` say how the
    attempt before ended (its status, and why when it ended early: the signal, the
    error, ``crashed``); both None on a first attempt.
    """

    number: int
    restart_count: int
    resumed: bool
    previous_status: str | None = None
    previous_reason: str | None = None

    @classmethod
    def of(cls, attempts: Sequence[Attempt]) -> AttemptInfo:
        """The value for the last of ``attempts`` (a record's list, oldest first)."""
        if not attempts:
            return cls(number=1, restart_count=0, resumed=False)
        this = attempts[-1]
        before = attempts[-2] if len(attempts) > 1 else None
        return cls(
            number=len(attempts),
            restart_count=this.restart_count,
            resumed=before is not None,
            previous_status=None if before is None else before.status,
            previous_reason=None if before is None else before.reason,
        )


@attrs.frozen
class LastMetric:
    """The last value logged for one metric, and the step it was logged at (if any)."""

    last: float
    step: int | None = None

    def to_json(self) -> dict[str, float | str | None]:
        # NaN and the infinities as metrics.jsonl writes them: run.json stays strict JSON.
        return {"last": json_number(self.last), "step": self.step}


def _last_metrics(data: object) -> dict[str, LastMetric]:
    metrics: dict[str, LastMetric] = {}
    for name, item in data.items() if isinstance(data, Mapping) else ():
        if isinstance(item, Mapping):
            last = number_from_json(item.get("last"))
            if last is not None:
                metrics[str(name)] = LastMetric(last, _optional_int(item.get("step")))
    return metrics


def _numbers(data: object) -> dict[str, float]:
    numbers = {
        str(k): number_from_json(v) for k, v in (data.items() if isinstance(data, Mapping) else ())
    }
    return {k: float(v) for k, v in numbers.items() if v is not None}


def status_for(exc: BaseException | None) -> str:
    """The final status of a run ended by ``exc`` (None: it ran to the end);
    ``refused`` when another launch held the run lock (:class:`LockContendedError`)."""
    if exc is None:
        return COMPLETED
    if isinstance(exc, LockContendedError):
        return REFUSED
    if isinstance(exc, SystemExit):
        # sys.exit() from a pipeline: a clean exit code is a completed run.
        return COMPLETED if exc.code in (None, 0) else FAILED
    return FAILED if isinstance(exc, Exception) else INTERRUPTED


def outcome_of(machine: LifecycleMachine) -> tuple[str, ErrorSummary | None]:
    """The run's status and error summary as the machine knows them now."""
    exc = machine.ended_by
    status = status_for(exc)
    if exc is None or status == COMPLETED:
        return status, None
    return status, ErrorSummary.of(exc, machine.ended_in or PIPELINE_STEP)


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _optional_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _timestamp(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value is not None else None
    except ValueError:
        return None


def _changes(value: object) -> dict[str, dict[str, Any]]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): dict(v) for k, v in value.items() if isinstance(v, Mapping)}


def _trackers(value: object) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping):
        return {}
    return {
        str(name): {str(key): str(item) for key, item in link.items()}
        for name, link in value.items()
        if isinstance(link, Mapping)
    }


@attrs.frozen
class RunRecord:
    """What one run directory says about its run (``run.json`` + ``lifecycle.jsonl``).

    ``status`` is what the record holds; :attr:`effective_status` is what to show
    (``crashed`` for a ``running`` run whose process is gone). Keys of ``run.json``
    this version does not know are kept in ``extra``.
    """

    run_id: str
    root: Path
    status: str
    state: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    rank: int | None = None
    world_size: int | None = None
    pid: int | None = None
    host: str | None = None
    boot_id: str | None = None
    process_start_ticks: int | None = None
    heartbeat_at: datetime | None = None
    heartbeat_s: float | None = None
    device: str | None = None
    error: ErrorSummary | None = None
    failed_rank: int | None = None
    """The rank whose failure ended the job, when it was not rank 0."""
    interruption: Interruption | None = None
    """The signal that ended the run and what told more about it (the scheduler's
    word), when a signal ended it (see ``lifecycle/ending.py``)."""
    scheduler: SchedulerJob | None = None
    """The scheduler's job the run ran in (SLURM's job id and array task), if any."""
    phases: Mapping[str, float] = attrs.field(factory=dict)
    elapsed_s: float | None = None
    argv: tuple[str, ...] = ()
    cwd: str | None = None
    entry_point: str | None = None
    entry_module: str | None = None
    entry: str | None = None
    """The pipeline as the command line named it (``--entry``), when it did."""
    python: str | None = None
    package_version: str | None = None
    job: str | None = None
    config_hash: str | None = None
    restart_count: int = 0
    sweep: str | None = None
    """The id of the sweep (``run --multirun``) this run is a member of, if any."""
    sweep_member: int | None = None
    """This run's number in its sweep (from 1)."""
    rerun_of: str | None = None
    """The run directory this run reruns (``orchestrator-fsm rerun``), if any."""
    attempts: tuple[Attempt, ...] = ()
    transitions: tuple[TransitionRecord, ...] = ()
    ranks: tuple[RunRecord, ...] = ()
    """The records of ranks other than 0 (``ranks/rank<N>.json``) for this attempt."""
    metrics: Mapping[str, LastMetric] = attrs.field(factory=dict)
    """Per metric this rank logged with ``log_metrics``: its last value and step."""
    summary: Mapping[str, float] = attrs.field(factory=dict)
    """What this rank logged with ``log_summary`` (a later value of a name wins)."""
    trackers: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)
    """Where observers mirror the run, by tracker (``{"mlflow": {"tracking_uri": ...,
    "run_id": ...}}``), as they said when it started; how a crashed run is found again."""
    determinism_changes: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    """The seed and determinism flags the program changed during the run (torch
    re-seeded, TF32 switched on, ...): ``{name: {"applied": ..., "at_end": ...}}``."""
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def effective_status(self) -> str:
        """The job's true status: this record's and every rank's (see :func:`infer_status`)."""
        return infer_status(self)

    @property
    def first_failure(self) -> RunRecord | None:
        """The record (this one, or a rank's) that went wrong first: failed, interrupted
        or crashed, earliest end first; None when none did. When a signal ended rank 0,
        a rank that failed or took a signal only after it did is not counted: that was
        the same job-wide signal, or its consequence (see :func:`job_signal_at`)."""
        signal_at = job_signal_at(self)
        gone = [
            record
            for record in (self, *self.ranks)
            if _own_status(record, None) in (FAILED, *INTERRUPTIONS, CRASHED)
            and (record is self or _before_signal(record, signal_at))
        ]
        if not gone:
            return None
        failed = [record for record in gone if record.status == FAILED] or gone
        far = datetime.max.replace(tzinfo=timezone.utc)
        return min(failed, key=lambda record: record.ended_at or far)

    @property
    def duration_s(self) -> float | None:
        """Wall time from start to end as the timestamps say; None while unfinished."""
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        root: Path,
        transitions: tuple[TransitionRecord, ...] = (),
        ranks: tuple[RunRecord, ...] = (),
    ) -> RunRecord:
        """The record of ``run.json``'s ``data``; missing or mistyped fields become None."""
        error = data.get("error")
        summary = ErrorSummary.from_json(error) if isinstance(error, Mapping) else None
        interruption = data.get("interruption")
        scheduler = data.get("scheduler")
        attempts = data.get("attempts")
        phases = data.get("phases")
        argv = data.get("argv")
        known = _record_fields()
        # Path() only when needed: listing 10,000 runs makes this a hot path.
        root = root if isinstance(root, Path) else Path(root)
        return cls(
            run_id=str(data.get("run_id") or root.name),
            root=root,
            status=str(data.get("status") or "unknown"),
            state=_optional_str(data.get("state")),
            started_at=_timestamp(data.get("started_at")),
            ended_at=_timestamp(data.get("ended_at")),
            rank=_optional_int(data.get("rank")),
            world_size=_optional_int(data.get("world_size")),
            pid=_optional_int(data.get("pid")),
            host=_optional_str(data.get("host")),
            boot_id=_optional_str(data.get("boot_id")),
            process_start_ticks=_optional_int(data.get("process_start_ticks")),
            heartbeat_at=_timestamp(data.get("heartbeat_at")),
            heartbeat_s=_optional_float(data.get("heartbeat_s")),
            device=_optional_str(data.get("device")),
            error=summary,
            failed_rank=_optional_int(data.get("failed_rank")),
            interruption=Interruption.from_json(interruption)
            if isinstance(interruption, Mapping)
            else None,
            scheduler=SchedulerJob.from_json(scheduler) if isinstance(scheduler, Mapping) else None,
            phases=_numbers(phases),
            elapsed_s=_optional_float(data.get("elapsed_s")),
            argv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
            cwd=_optional_str(data.get("cwd")),
            entry_point=_optional_str(data.get("entry_point")),
            entry_module=_optional_str(data.get("entry_module")),
            entry=_optional_str(data.get("entry")),
            python=_optional_str(data.get("python")),
            package_version=_optional_str(data.get("package_version")),
            job=_optional_str(data.get("job")),
            config_hash=_optional_str(data.get("config_hash")),
            restart_count=_optional_int(data.get("restart_count")) or 0,
            sweep=_optional_str(data.get("sweep")),
            sweep_member=_optional_int(data.get("sweep_member")),
            rerun_of=_optional_str(data.get("rerun_of")),
            attempts=tuple(
                Attempt.from_json(item)
                for item in (attempts if isinstance(attempts, list) else ())
                if isinstance(item, Mapping)
            ),
            transitions=transitions,
            ranks=ranks,
            metrics=_last_metrics(data.get("metrics")),
            summary=_numbers(data.get("summary")),
            trackers=_trackers(data.get("trackers")),
            determinism_changes=_changes(data.get("determinism_changes")),
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        """The ``run.json`` form of the record (without the transitions)."""
        data: dict[str, Any] = dict(self.extra)
        data.update(
            run_id=self.run_id,
            root=str(self.root),
            status=self.status,
            state=self.state,
            started_at=None if self.started_at is None else self.started_at.isoformat(),
            ended_at=None if self.ended_at is None else self.ended_at.isoformat(),
            rank=self.rank,
            world_size=self.world_size,
            pid=self.pid,
            host=self.host,
            boot_id=self.boot_id,
            process_start_ticks=self.process_start_ticks,
            heartbeat_at=None if self.heartbeat_at is None else self.heartbeat_at.isoformat(),
            heartbeat_s=self.heartbeat_s,
            device=self.device,
            error=None if self.error is None else self.error.to_json(),
            failed_rank=self.failed_rank,
            interruption=None if self.interruption is None else self.interruption.to_json(),
            scheduler=None if self.scheduler is None else self.scheduler.to_json(),
            phases=dict(self.phases),
            elapsed_s=self.elapsed_s,
            argv=list(self.argv),
            cwd=self.cwd,
            entry_point=self.entry_point,
            entry_module=self.entry_module,
            entry=self.entry,
            python=self.python,
            package_version=self.package_version,
            job=self.job,
            config_hash=self.config_hash,
            restart_count=self.restart_count,
            sweep=self.sweep,
            sweep_member=self.sweep_member,
            rerun_of=self.rerun_of,
            attempts=[attempt.to_json() for attempt in self.attempts],
            metrics={name: item.to_json() for name, item in self.metrics.items()},
            summary=json_numbers(self.summary),
            trackers={name: dict(link) for name, link in self.trackers.items()},
            determinism_changes={k: dict(v) for k, v in self.determinism_changes.items()},
        )
        return data


#: The states the caller's own work runs in: the with-block, an ``--entry`` function.
_PIPELINE_STATES: Final = frozenset({LifecycleState.READY, LifecycleState.REPORTED})


@attrs.frozen
class PipelineSpan:
    """The caller's own work in one attempt: from the end of the step that made the run
    READY to the start of its cleanup, less the steps taken meanwhile (the report, which
    the caller may ask for before, during or after training). ``after``: the index, in
    the transitions it was found in, of the transition into READY; ``until``: that of
    the cleanup."""

    after: int
    started_at: datetime
    duration_s: float
    until: int


def pipeline_spans(transitions: Sequence[TransitionRecord]) -> list[PipelineSpan]:
    """Every pipeline span in ``transitions`` (one per attempt that reached READY and
    was cleaned up; none while the pipeline still runs)."""
    spans = []
    start: tuple[int, datetime] | None = None
    in_steps_s = 0.0
    for index, record in enumerate(transitions):
        if start is not None and record.step in MACHINE_STEPS:
            total = (record.started_at - start[1]).total_seconds() - in_steps_s
            spans.append(PipelineSpan(start[0], start[1], round(max(0.0, total), 6), index))
            start = None
        elif start is not None and record.source in _PIPELINE_STATES:
            in_steps_s += record.duration_s
        elif record.ok and record.dest in _PIPELINE_STATES and record.step not in MACHINE_STEPS:
            start = (index, record.started_at + timedelta(seconds=record.duration_s))
            in_steps_s = 0.0
        else:  # another attempt's first steps: this one never reached its cleanup
            start = None
    return spans


@functools.cache
def _record_fields() -> frozenset[str]:
    return frozenset(field.name for field in attrs.fields(RunRecord))


def stale_after(heartbeat_s: float) -> float:
    """Seconds without a heartbeat after which a ``running`` run counts as crashed."""
    return 3 * heartbeat_s + 60.0


def _own_status(record: RunRecord, now: datetime | None) -> str:
    """What one record's status truly is, its ranks aside."""
    if record.status != RUNNING:
        return record.status
    if record.host == socket.gethostname():
        current_boot = boot_id()
        if None not in (record.boot_id, current_boot) and record.boot_id != current_boot:
            return CRASHED
        alive = pid_exists(record.pid)
        if alive is False:
            return CRASHED
        if record.pid is not None and record.process_start_ticks is not None:
            started = process_start_ticks(record.pid)
            if started is not None:
                return RUNNING if started == record.process_start_ticks else CRASHED
        if alive is True:
            return RUNNING
    if record.heartbeat_at is not None and record.heartbeat_s:
        now = now or datetime.now(timezone.utc)
        if (now - record.heartbeat_at).total_seconds() > stale_after(record.heartbeat_s):
            return CRASHED
    return RUNNING


#: How much earlier than rank 0 another rank may take a signal and still have taken the
#: same job-wide one (each takes it when its Python handler runs: a rank in a long C call
#: runs it late).
_SAME_SIGNAL_S: Final = 1.0


def job_signal_at(record: RunRecord) -> datetime | None:
    """When rank 0 took the signal that ended the job ``record`` (rank 0's) describes;
    None when no signal ended rank 0 or another rank was found to have ended the job."""
    interruption = record.interruption
    if record.rank not in (None, 0) or record.failed_rank is not None or interruption is None:
        return None
    return interruption.received_at if record.status in INTERRUPTIONS else None


def _before_signal(rank: RunRecord, signal_at: datetime | None) -> bool:
    """Whether ``rank`` ended the job on its own rather than by (or after) the job-wide
    signal rank 0 took at ``signal_at``."""
    if signal_at is None:
        return True
    status = _own_status(rank, None)
    if status == FAILED:
        return rank.ended_at is not None and rank.ended_at < signal_at
    if status in INTERRUPTIONS:
        taken = rank.interruption.received_at if rank.interruption is not None else None
        taken = taken or rank.ended_at
        return taken is not None and (signal_at - taken).total_seconds() > _SAME_SIGNAL_S
    return True


def infer_status(record: RunRecord, now: datetime | None = None) -> str:
    """The true status of the job ``record`` describes: ``crashed`` for a record that
    says ``running`` but whose process is gone, and the worst of every rank's status
    (:data:`~orchestrator_fsm.status.WORST_FIRST`, then completed) when ranks disagree;
    when a signal ended rank 0, a rank that took the same signal or failed after it is
    its consequence and does not count (see :func:`job_signal_at`).

    On the host that ran a process, its identity decides: the machine rebooted since
    (another boot id), no process has the pid, or the process with that pid is a later
    one (another start time) means crashed; a live process with the recorded identity
    means running, however old its heartbeat (it may be suspended). Elsewhere (a
    shared file system read from another node), or when nothing can be probed, the
    heartbeat decides: none for longer than :func:`stale_after` its interval means
    crashed. ``now`` is the time to judge the heartbeat by (default: the current time).
    """
    signal_at = job_signal_at(record)
    statuses = {
        _own_status(item, now)
        for item in (record, *record.ranks)
        if item is record or _before_signal(item, signal_at)
    }
    # When ranks disagree, the job is what its worst rank is. Only rank 0 takes the
    # lock, so ``refused`` is rank 0's alone (no other rank joins a run never ready).
    return next((status for status in WORST_FIRST if status in statuses), record.status)


def run_status(root: Path | str) -> str:
    """The true status of the run directory ``root``: one of
    :data:`~orchestrator_fsm.status.STATUSES` (see :func:`infer_status`).

    Raises ``FileNotFoundError`` when ``root`` holds no ``run.json`` and ``ValueError``
    when it is not a JSON object.
    """
    return infer_status(read_run(root))


def _read_transitions(root: Path) -> tuple[TransitionRecord, ...]:
    # A torn last line (the writer died mid-append) or a foreign line is skipped.
    path = root / JOURNAL_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ()
    records: list[TransitionRecord] = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
            records.append(TransitionRecord.from_json(data))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return tuple(records)


def read_run(root: Path | str, *, journal: bool = True) -> RunRecord:
    """The record of the run directory ``root``.

    ``journal=False`` reads only what the run's true status needs, for listing many
    runs: ``run.json``, and the other ranks' records when the job had more than one
    process; ``transitions`` stays empty. Raises ``FileNotFoundError`` when ``root``
    holds no ``run.json`` and ``ValueError`` naming the file when it is not a JSON object.
    """
    root = root if isinstance(root, Path) else Path(root)
    path = os.path.join(root, RUN_FILE)
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    record = RunRecord.from_json(data, root, _read_transitions(root) if journal else ())
    if record.status == RUNNING:
        record = _with_logged_values(record)
    if not journal and record.world_size == 1:
        return record
    return attrs.evolve(record, ranks=read_ranks(root, record.restart_count))


def _with_logged_values(record: RunRecord) -> RunRecord:
    """``record`` of a run that never wrote its last record (live, or killed with
    SIGKILL) with the last metrics and the summary its rank's metrics file holds: the
    file has every line at once, ``run.json`` only what its last heartbeat wrote."""
    lines = effective_lines(read_lines(metrics_file(record.root, record.rank or 0)))
    logged, summary = last_values(lines)
    if not (logged or summary):
        return record
    metrics = dict(record.metrics)
    for name, (value, step) in logged.items():
        if _optional_float(value) is not None:
            metrics[name] = LastMetric(float(value), step)
    return attrs.evolve(record, metrics=metrics, summary={**record.summary, **_numbers(summary)})


def read_ranks(root: Path, restart_count: int) -> tuple[RunRecord, ...]:
    """The records other ranks keep in ``root`` for the attempt of ``restart_count``;
    unreadable ones and those of other attempts are left out."""
    ranks: list[RunRecord] = []
    for path in sorted((root / RANKS_DIR).glob("rank*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            rank = RunRecord.from_json(data, root)
            if rank.restart_count == restart_count and rank.rank not in (None, 0):
                ranks.append(rank)
    return tuple(sorted(ranks, key=lambda rank: rank.rank or 0))
