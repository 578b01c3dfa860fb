"""The one writer of a run's record: ``run.json``, ``lifecycle.jsonl``, a rank's own record
and the job's entry.

``RunRecorder`` listens to a ``LifecycleMachine``. Rank 0 starts the record the moment
its run directory is claimed (or reopened by a restart, as a new attempt), appends
every transition to the journal, and finishes the record exactly once, when the
machine reaches CLEANED or FAILED, with a status derived from the machine alone: the
exception that ended the run (``machine.ended_by``) and the step it ended in. Any
other rank keeps the same kind of record in ``ranks/rank<N>.json`` of that directory.
Files are rewritten atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from orchestrator_fsm._fs import append_whole, atomic_write_text
from orchestrator_fsm._system import boot_id, process_start_ticks, say_on_stderr
from orchestrator_fsm._version import __version__
from orchestrator_fsm.entry import entry_module
from orchestrator_fsm.errors import LifecycleError
from orchestrator_fsm.layout import JOURNAL_FILE, RESERVE_FILE, RUN_FILE, metrics_file, rank_file
from orchestrator_fsm.lifecycle.record import (
    PIPELINE_STEP,
    Attempt,
    ErrorSummary,
    LastMetric,
    RunRecord,
    infer_status,
    outcome_of,
    pipeline_spans,
    read_ranks,
    read_run,
)
from orchestrator_fsm.lifecycle.table import MACHINE_STEPS, TERMINAL_STATES, LifecycleState
from orchestrator_fsm.observers import Observers
from orchestrator_fsm.phases.logging import FILE_ONLY
from orchestrator_fsm.redaction import redact_argv, redact_secrets
from orchestrator_fsm.status import COMPLETED, CRASHED, FAILED, INTERRUPTED, RUNNING

if TYPE_CHECKING:
    from orchestrator_fsm.lifecycle.machine import LifecycleMachine, TransitionRecord
    from orchestrator_fsm.phases.context import RunContext

__all__ = ["RANKS_GRACE_S", "RunRecorder"]

#: How long rank 0, at its end, waits for the other ranks' records to be final.
RANKS_GRACE_S: Final = 30.0

#: Space kept aside in the run directory for the record's last writes (see RunRecorder).
_MIN_RESERVE_BYTES = 64 * 1024

#: The fields of a metrics line besides the values; no metric may take these names.
_METRIC_LINE_FIELDS: Final = frozenset({"time", "step", "rank", "kind"})


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _ended_early(previous: RunRecord) -> str | None:
    """Why the attempt ``previous`` describes (rank 0's record and its ranks') ended
    early, as the next attempt sees it; None when it did not."""
    status = infer_status(previous)
    if status == COMPLETED:
        return None
    if status in (CRASHED, RUNNING):
        return CRASHED
    first = previous.first_failure
    who = "" if first is None or not first.rank else f"rank {first.rank}: "
    if status == INTERRUPTED:
        return f"{who}preempted"
    error = first.error if first is not None else previous.error
    return f"{who}{error}" if error else f"{who}failed"


class RunRecorder:
    """The one writer of a run's record.

    :meth:`start` writes the first record as soon as the run directory exists (if it
    cannot, the run must not go on: the directory would have no record); from then
    on the recorder follows the machine's transitions (:meth:`observe`) and finishes
    the record exactly once. What it writes is a :class:`RunRecord` in its ``to_json``
    form, so ``read_run`` reads back exactly the shape written. Rank 0 writes
    ``run.json``, the journal and the job's entry (see ``phases/joining.py``); rank N
    writes only ``ranks/rank<N>.json``. ``elapsed`` reports the run's wall time.

    Faults while writing never cut the record short or leave half a file: files are
    replaced atomically (a failed write keeps the previous complete file), a failed
    append to the journal is cut back, and each failure is one line on stderr. Space
    for the last writes is kept aside at start (:data:`RESERVE_FILE`) and handed back
    just before them, so a run that fills its disk still ends with its true status.
    A daemon thread refreshes ``heartbeat_at`` every ``heartbeat_s`` seconds (0: none)
    until the record is final.
    """

    def __init__(
        self,
        run: RunContext,
        elapsed: Any,
        *,
        heartbeat_s: float = 0.0,
        report: Callable[[str], None] = say_on_stderr,
        observers: Iterable[object] = (),
    ) -> None:
        self._run = run
        self._elapsed = elapsed
        self._heartbeat_s = heartbeat_s
        self._report = report
        self._machine: LifecycleMachine | None = None
        self._record: RunRecord | None = None
        self._journaled = 0
        self._finished = False
        self._reported: set[str] = set()
        self._written = True
        self._lock = threading.RLock()
        self._stop_beating = threading.Event()
        self._stop_waiting = threading.Event()
        self._beater: threading.Thread | None = None
        self._last: dict[str, LastMetric] = {}
        self._summary: dict[str, float] = {}
        self._observers = Observers(observers, report)

    @property
    def record(self) -> RunRecord | None:
        """The record as this process knows it (None before the run directory exists),
        with the metrics and summary logged so far."""
        record = self._record
        if record is not None and (self._last or self._summary):
            with self._lock:
                record = attrs.evolve(record, metrics=dict(self._last), summary=dict(self._summary))
        return record

    @property
    def on_disk(self) -> bool:
        """Whether the record's file holds :attr:`record` (False after a failed write)."""
        return self._written

    def observe(self, machine: LifecycleMachine) -> None:
        """Listen to ``machine`` from now on."""
        self._machine = machine
        machine.add_listener(self._on_transition)

    def log_metrics(self, values: Mapping[str, object], step: int | None = None) -> None:
        """Append one line of ``values`` (at ``step``) to this rank's metrics file and
        remember each as the metric's last value; ``run.json`` gets them at its next
        write (the heartbeat's, the final one), not at every call."""
        self._append("metrics", values, step)

    def log_summary(self, values: Mapping[str, object]) -> None:
        """Append one summary line of ``values`` to this rank's metrics file; they
        become the record's ``summary`` (a name logged again replaces its value)."""
        self._append("summary", values, None)

    def _append(self, kind: str, values: Mapping[str, object], step: int | None) -> None:
        checked = _checked_values(values)
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise ValueError(f"step must be an integer >= 0 or None, got {step!r}")
        with self._lock:
            record = self._record
            if record is None or self._finished:
                where = "has ended" if self._finished else "has no run directory yet"
                raise LifecycleError(f"cannot log {kind}: the run {where}")
            line = {"time": _now().isoformat(), "kind": kind, "rank": self._run.rank}
            line["step"] = step
            line.update(checked)
            # One whole line or none: a reader never sees half of it (a full disk).
            append_whole(metrics_file(record.root, self._run.rank), json.dumps(line) + "\n")
            if kind == "summary":
                self._summary.update(checked)
            else:
                for name, value in checked.items():
                    self._last[name] = LastMetric(value, step)
        if self._observers:
            if kind == "summary":
                self._observers.notify("summary", dict(checked))
            else:
                self._observers.notify("metrics", dict(checked), step)

    @property
    def _path(self) -> Path:
        assert self._record is not None
        if self._run.is_main_process:
            return self._record.root / RUN_FILE
        return rank_file(self._record.root, self._run.rank)

    def start(self) -> None:
        """Write the first record into the run directory just claimed, reopened or
        joined, keep space aside for the last writes, tell the job where the run is,
        and start the heartbeat. Raises the ``OSError`` of a failed write; nothing of
        the recorder's is left in the directory then."""
        paths = self._run.paths
        if paths is None or self._record is not None:
            return
        record = self._first_record(paths.root, paths.run_id)
        self._record = record
        text = _record_text(record)
        main = self._run.is_main_process
        try:
            if not main:
                self._path.parent.mkdir(exist_ok=True)
            atomic_write_text(self._path, text)
            if main:
                _fill(paths.root / RESERVE_FILE, max(_MIN_RESERVE_BYTES, 8 * len(text)))
        except BaseException as exc:
            path = self._path
            self._record = None
            if main and not self._run.resumed:
                for name in (RUN_FILE, RESERVE_FILE):
                    with contextlib.suppress(OSError):
                        os.unlink(paths.root / name)
            if isinstance(exc, OSError):
                raise type(exc)(
                    exc.errno, f"cannot write the run record ({exc.strerror})", str(path)
                ) from exc
            raise
        if main:
            self._tell_job(failed=None)
        self._observers.notify("run_started", record)
        self._keep_tracker_links()
        if self._heartbeat_s > 0:
            self._beater = threading.Thread(
                target=self._beat, name="orchestrator-fsm-heartbeat", daemon=True
            )
            self._beater.start()

    def _keep_tracker_links(self) -> None:
        """Put where the observers mirror the run into the record (one more write, only
        when one of them links a tracker), so a crashed run can be reconciled there."""
        links = self._observers.tracker_links() if self._observers else {}
        if not links:
            return
        with self._lock:
            assert self._record is not None
            self._record = attrs.evolve(self._record, trackers=links)
            self._update()

    def announce_end(self) -> None:
        """Log how the run ended on the run logger (the machine's cleanup hook)."""
        run = self._run
        if run.logger is None or run.paths is None or self._machine is None:
            return
        status, _ = outcome_of(self._machine)
        exc = self._machine.ended_by
        if isinstance(exc, Exception) and status == FAILED:
            # The error the with-block raised, with its traceback, where users look.
            run.logger.error(
                "the run failed in %s: %s",
                self._machine.ended_in or PIPELINE_STEP,
                exc,
                exc_info=(type(exc), exc, exc.__traceback__),
                extra=FILE_ONLY,
            )
        run.logger.info(
            "run %s %s after %.2fs; outputs in %s",
            run.paths.run_id,
            status,
            self._elapsed_s(),
            run.paths.root,
        )

    def _elapsed_s(self) -> float:
        return round(float(self._elapsed()), 6)

    def _on_transition(self, record: TransitionRecord) -> None:
        if self._machine is None or self._finished:
            return
        final = record.dest in TERMINAL_STATES and record.step in MACHINE_STEPS
        if self._record is None:
            if final and self._run.is_main_process:
                # Rank 0 ended before it had a run directory: the waiting ranks must
                # hear it now rather than wait for one that never comes.
                self._finished = True
                _, error = outcome_of(self._machine)
                self._tell_job(failed=str(error) if error else "the run ended early")
            return
        if not record.ok and record.step not in MACHINE_STEPS and self._run.logger is not None:
            # Told from inside the machine's handler of the step's error: it is the one
            # being handled, and the run's log is still open (the rollback comes next).
            exc = sys.exc_info()[1]
            if isinstance(exc, Exception):
                self._run.logger.error(
                    "step %r failed: %s",
                    record.step,
                    exc,
                    exc_info=(type(exc), exc, exc.__traceback__),
                )
        if final:
            self._stop_heartbeat()
            self._release_reserve()
        with self._lock:
            before = self._record
            phases = dict(before.phases)
            if self._run.is_main_process:
                phases = self._journal_new_transitions(before.root, phases)
            moved = record.ok and record.step not in MACHINE_STEPS
            device = None if self._run.device is None else str(self._run.device)
            self._record = attrs.evolve(
                before,
                phases=phases,
                state=record.dest.value if moved else before.state,
                device=device or before.device,
            )
            # The record is rewritten (fsync + rename) only when a reader would learn
            # something new: that the run is READY (other ranks wait for it), how it
            # ended. Per-step progress is in lifecycle.jsonl; liveness is the heartbeat's.
            if final:
                self._finish(record)
            elif moved and record.dest is LifecycleState.READY:
                self._update()
        self._observers.notify("transition", record)
        if final:
            assert self._record is not None
            self._observers.notify("run_ended", self.record)

    def _first_record(self, root: Path, run_id: str) -> RunRecord:
        from orchestrator_fsm.phases.joining import job_key
        from orchestrator_fsm.phases.manifest import record_invocation

        assert self._machine is not None
        run = self._run
        history = self._machine.history
        invocation = record_invocation()
        known = {field.name for field in attrs.fields(RunRecord)}
        pid = os.getpid()
        now = _now()
        started = history[0].started_at if history else now
        previous = read_run(root) if run.resumed else None
        attempts: tuple[Attempt, ...] = ()
        if previous is not None:
            earlier = previous.attempts or (
                Attempt(number=1, started_at=previous.started_at, pid=previous.pid),
            )
            # The attempt before, as the whole job lived it: its ranks included.
            last = attrs.evolve(
                earlier[-1],
                ended_at=earlier[-1].ended_at or previous.ended_at or previous.heartbeat_at,
                status=infer_status(previous),
                reason=_ended_early(previous),
            )
            attempts = (*earlier[:-1], last)
        attempts += (
            Attempt(
                number=len(attempts) + 1,
                restart_count=run.launch.restart_count,
                started_at=started,
                pid=pid,
                host=socket.gethostname(),
            ),
        )
        return RunRecord(
            run_id=run_id,
            root=root,
            status=RUNNING,
            state=self._machine.state.value,
            started_at=previous.started_at if previous is not None else started,
            rank=run.rank,
            world_size=run.world_size,
            pid=pid,
            host=socket.gethostname(),
            boot_id=boot_id(),
            process_start_ticks=process_start_ticks(pid),
            heartbeat_at=now if self._heartbeat_s > 0 else None,
            heartbeat_s=self._heartbeat_s if self._heartbeat_s > 0 else None,
            argv=tuple(redact_argv(invocation["argv"])),
            cwd=invocation["cwd"],
            entry_point=invocation["entry_point"],
            entry_module=entry_module(run.entry) if run.entry else invocation["entry_module"],
            entry=run.entry,
            python=invocation["python"],
            package_version=__version__,
            job=job_key(run.launch, run.cfg.config_hash()),
            config_hash=run.cfg.config_hash(),
            restart_count=run.launch.restart_count,
            sweep=None if run.sweep is None else run.sweep[0],
            sweep_member=None if run.sweep is None else run.sweep[1],
            rerun_of=None if run.rerun_of is None else str(run.rerun_of),
            attempts=attempts if run.is_main_process else (),
            extra={key: value for key, value in invocation.items() if key not in known},
        )

    def _tell_job(self, failed: str | None) -> None:
        """Write the job's entry (rank 0 only, when the launcher names a job)."""
        from orchestrator_fsm.layout import job_entry_file
        from orchestrator_fsm.phases.joining import JobEntry, job_key

        run = self._run
        key = job_key(run.launch, run.cfg.config_hash())
        if key is None or not run.is_main_process:
            return
        record = self._record
        entry = JobEntry(
            job=key,
            restart_count=run.launch.restart_count,
            written_at=_now(),
            root=None if record is None else record.root,
            run_id=None if record is None else record.run_id,
            attempt=None if record is None else len(record.attempts),
            config_hash=run.cfg.config_hash(),
            failed=None if failed is None else redact_secrets(failed),
        )
        path = job_entry_file(run.cfg.telemetry.output_dir, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(entry.to_json(), indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            if record is not None:
                raise
            # Nothing else can be done for the other ranks; they will time out.
            self._report_once("job", f"could not write the job entry {path} ({exc})")

    def _journal_new_transitions(self, root: Path, phases: dict[str, float]) -> dict[str, float]:
        """Append what the machine did since the last call; ``phases`` plus its durations."""
        assert self._machine is not None and self._record is not None
        history = self._machine.history
        fresh = history[self._journaled :]
        if not fresh:
            return phases
        attempt = len(self._record.attempts)
        lines = []
        for item in fresh:
            line = redact_secrets(dict(item.to_json(), pid=os.getpid(), attempt=attempt))
            lines.append(json.dumps(line, sort_keys=True))
        try:
            append_whole(root / JOURNAL_FILE, "\n".join(lines) + "\n")
        except OSError as exc:
            # Kept for the next append: the journal stays a prefix of the history.
            self._report_once("journal", f"could not append to {root / JOURNAL_FILE} ({exc})")
        else:
            self._journaled = len(history)
        for item in fresh:
            if item.ok:
                phases[item.step] = round(phases.get(item.step, 0.0) + item.duration_s, 6)
        return phases

    def stop_waiting(self, *_: object) -> None:
        """Stop waiting for the other ranks' records (a signal came: end now)."""
        self._stop_waiting.set()

    def _job_outcome(
        self, status: str, error: ErrorSummary | None
    ) -> tuple[str, ErrorSummary | None, int | None]:
        """Rank 0's outcome folded with the other ranks' records: the job is failed (or
        interrupted) when any rank was, with the error of the rank that went wrong
        first. A rank 0 that completed waits up to :data:`RANKS_GRACE_S` for the ranks
        to end (not once a signal asks this process to end)."""
        assert self._record is not None
        run = self._run
        if not run.is_main_process or run.world_size < 2:
            return status, error, None
        root, attempt = self._record.root, run.launch.restart_count
        # Only a rank 0 that ended well waits: one that is failing or interrupted (a
        # launcher tearing the job down) writes its record at once, before it is killed.
        deadline = time.monotonic() + (RANKS_GRACE_S if status == COMPLETED else 0.0)
        ranks = read_ranks(root, attempt)
        while not self._stop_waiting.is_set() and time.monotonic() < deadline:
            if len([r for r in ranks if r.effective_status != RUNNING]) >= run.world_size - 1:
                break
            self._stop_waiting.wait(0.1)
            ranks = read_ranks(root, attempt)
        mine = attrs.evolve(self._record, status=status, error=error, ended_at=_now())
        first = attrs.evolve(mine, ranks=ranks).first_failure
        if first is None or first.rank in (None, 0):
            return status, error, None
        if first.status == RUNNING:  # its process vanished
            summary = ErrorSummary("RankCrashed", f"rank {first.rank} is gone", PIPELINE_STEP)
        else:
            summary = first.error or ErrorSummary("RankFailed", "", PIPELINE_STEP)
        worst = INTERRUPTED if first.status == INTERRUPTED else FAILED
        return worst, summary, first.rank

    def _finish(self, record: TransitionRecord) -> None:
        assert self._machine is not None and self._record is not None
        status, error = outcome_of(self._machine)
        status, error, failed_rank = self._job_outcome(status, error)
        self._finished = True
        ended = _now()
        attempts = self._record.attempts
        if attempts:
            reason = None
            if status == INTERRUPTED:
                reason = "preempted"
            elif error is not None:
                reason = str(error)
            attempts = (
                *attempts[:-1],
                attrs.evolve(attempts[-1], ended_at=ended, status=status, reason=reason),
            )
        phases = dict(self._record.phases)
        spans = pipeline_spans(self._machine.history)
        if spans and spans[-1].after == len(self._machine.history) - 2:
            # The caller's own work, between READY and this cleanup: a row of its own
            # in `inspect`, so the timeline has no unlabelled gap.
            total = phases.get(PIPELINE_STEP, 0.0) + spans[-1].duration_s
            phases[PIPELINE_STEP] = round(total, 6)
        self._record = attrs.evolve(
            self._record,
            status=status,
            state=record.dest.value,
            ended_at=ended,
            phases=phases,
            error=error,
            failed_rank=failed_rank,
            elapsed_s=self._elapsed_s(),
            attempts=attempts,
        )
        failure = self._write()
        if failure is not None:
            self._report(
                f"the run ended {status}, but {self._path} could not be updated "
                f"({failure}); it still holds the record written before"
            )

    def _write(self) -> OSError | None:
        """Replace the record's file with the record; the error when that failed."""
        assert self._record is not None
        if self._last or self._summary:
            self._record = attrs.evolve(
                self._record, metrics=dict(self._last), summary=dict(self._summary)
            )
        try:
            atomic_write_text(self._path, _record_text(self._record))
        except OSError as exc:
            self._written = False
            return exc
        self._written = True
        return None

    def _update(self) -> None:
        # A record written while the run goes on: on failure the previous one stands
        # (the final write will try again); said once, not at every heartbeat.
        failure = self._write()
        if failure is not None:
            self._report_once(
                "update", f"could not update {self._path} ({failure}); it keeps the previous record"
            )

    def _report_once(self, kind: str, line: str) -> None:
        if kind not in self._reported:
            self._reported.add(kind)
            self._report(line)

    def _beat(self) -> None:
        while not self._stop_beating.wait(self._heartbeat_s):
            with self._lock:
                if self._finished or self._record is None:
                    return
                self._record = attrs.evolve(self._record, heartbeat_at=_now())
                self._update()

    def _stop_heartbeat(self) -> None:
        self._stop_beating.set()
        beater, self._beater = self._beater, None
        if beater is not None and beater is not threading.current_thread():
            beater.join()

    def _release_reserve(self) -> None:
        if self._record is not None and self._run.is_main_process:
            with contextlib.suppress(OSError):
                os.unlink(self._record.root / RESERVE_FILE)


def _checked_values(values: Mapping[str, object]) -> dict[str, float | int]:
    """``values`` when every key is a string and every value a finite number (not a
    bool); otherwise ``ValueError`` naming the first bad key."""
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"expected a non-empty mapping of names to numbers, got {values!r}")
    checked: dict[str, float | int] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric names must be non-empty strings, got {key!r}")
        if key in _METRIC_LINE_FIELDS:
            raise ValueError(
                f"metric {key!r}: the name is one of the line's own fields "
                f"({', '.join(sorted(_METRIC_LINE_FIELDS))}); choose another"
            )
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"metric {key!r}: expected a finite number, got {type(value).__name__} {value!r}"
            )
        number = value if isinstance(value, (int, float)) else float(value)
        if not math.isfinite(number):
            raise ValueError(f"metric {key!r}: expected a finite number, got {number!r}")
        checked[key] = number
    return checked


def _record_text(record: RunRecord) -> str:
    return (
        json.dumps(redact_secrets(record.to_json()), indent=2, sort_keys=True, default=str) + "\n"
    )


def _fill(path: Path, size: int) -> None:
    """Create ``path`` holding ``size`` bytes of real disk space (raises when there is none)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = bytes(min(size, 64 * 1024))
        left = size
        while left > 0:
            left -= os.write(fd, block[:left])
        os.fsync(fd)
    finally:
        os.close(fd)
