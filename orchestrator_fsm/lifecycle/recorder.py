"""The one writer of a run's record: ``run.json``, ``lifecycle.jsonl``, a rank's own record
and the job's entry.

``RunRecorder`` listens to a ``LifecycleMachine``. Rank 0 starts the record the moment
its run directory is claimed (or reopened by a restart, as a new attempt), appends
every transition to the journal, and finishes the record exactly once, when the
machine reaches CLEANED or FAILED, with a status derived from the machine alone: the
exception that ended the run (``machine.ended_by``) and the step it ended in. Any
other rank keeps the same kind of record in ``ranks/rank<N>.json`` of that directory.
What differs by rank is in ``lifecycle/rank_writers.py``; the files and how they are
written in ``lifecycle/record_files.py``; the metrics line in ``lifecycle/metrics.py``.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from orchestrator_fsm._fs import append_whole
from orchestrator_fsm._system import boot_id, process_start_ticks, record_invocation, say_on_stderr
from orchestrator_fsm._version import __version__
from orchestrator_fsm.errors import LifecycleError, RunInterrupted
from orchestrator_fsm.layout import metrics_file
from orchestrator_fsm.lifecycle.ending import scheduler_job
from orchestrator_fsm.lifecycle.job_index import job_key
from orchestrator_fsm.lifecycle.listener import NoListener, RunListener
from orchestrator_fsm.lifecycle.metrics import (
    METRICS_KIND,
    SUMMARY_KIND,
    checked_step,
    checked_values,
    effective_lines,
    last_values,
    metrics_line,
    read_lines,
)
from orchestrator_fsm.lifecycle.rank_writers import (
    closed_attempts,
    ranks_grace_from_env,
    writer_for,
)
from orchestrator_fsm.lifecycle.record import (
    PIPELINE_STEP,
    LastMetric,
    RunRecord,
    outcome_of,
    pipeline_spans,
)
from orchestrator_fsm.lifecycle.table import MACHINE_STEPS, TERMINAL_STATES, LifecycleState
from orchestrator_fsm.redaction import redact_argv
from orchestrator_fsm.run_log import FILE_ONLY
from orchestrator_fsm.status import FAILED, INTERRUPTED, RUNNING

if TYPE_CHECKING:
    from orchestrator_fsm.lifecycle.machine import LifecycleMachine, TransitionRecord
    from orchestrator_fsm.run_context import RunContext

__all__ = ["RunRecorder"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Heartbeat:
    """A daemon thread that calls ``beat`` every ``every_s`` seconds until stopped."""

    def __init__(self, every_s: float, beat: Callable[[], bool]) -> None:
        self._every_s = every_s
        self._beat = beat
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="orchestrator-fsm-heartbeat", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            if not self._beat():
                return

    def stop(self) -> None:
        """Stop beating; returns once the thread has (unless called from it)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


class RunRecorder:
    """The one writer of a run's record.

    :meth:`start` writes the first record as soon as the run directory exists (if it
    cannot, the run must not go on: the directory would have no record); from then
    on the recorder follows the machine's transitions (:meth:`observe`) and finishes
    the record exactly once. What it writes is a :class:`RunRecord` in its ``to_json``
    form, so ``read_run`` reads back exactly the shape written. Rank 0 writes
    ``run.json``, the journal and the job's entry (``lifecycle/job_index.py``); rank N
    writes only ``ranks/rank<N>.json``. ``elapsed`` reports the run's wall time.

    Faults while writing never cut the record short or leave half a file: files are
    replaced atomically (a failed write keeps the previous complete file), a failed
    append to the journal is cut back, and each failure is one line (``report``, by
    default on stderr). Space for the last writes is kept aside at start
    (:data:`~orchestrator_fsm.layout.RESERVE_FILE`) and handed back just before them,
    so a run that fills its disk still ends with its true status. A daemon thread
    refreshes ``heartbeat_at`` every ``heartbeat_s`` seconds (0: none) until the
    record is final.

    ``listener`` is told what the recorder wrote (:class:`RunListener`).
    ``entry_module`` is the pipeline's module as the command line named it (None: the
    module ``python -m`` ran, if any). ``ranks_grace_s``: how long a rank 0 that
    completed waits for the other ranks' records at its end; None reads
    ``ORCHESTRATOR_FSM_RANKS_GRACE_S`` (default 30 s).
    """

    def __init__(
        self,
        run: RunContext,
        elapsed: Any,
        *,
        heartbeat_s: float = 0.0,
        report: Callable[[str], None] = say_on_stderr,
        listener: RunListener | None = None,
        entry_module: str | None = None,
        ranks_grace_s: float | None = None,
    ) -> None:
        self._run = run
        self._elapsed = elapsed
        self._heartbeat_s = heartbeat_s
        self._report = report
        self._listener: RunListener = NoListener() if listener is None else listener
        self._entry_module = entry_module
        self._machine: LifecycleMachine | None = None
        self._record: RunRecord | None = None
        self._finished = False
        self._reported: set[str] = set()
        self._written = True
        self._lock = threading.RLock()
        self._heartbeat: _Heartbeat | None = None
        self._last: dict[str, LastMetric] = {}
        self._summary: dict[str, float] = {}
        self._warned_metrics: set[str] = set()
        grace = ranks_grace_from_env() if ranks_grace_s is None else ranks_grace_s
        self._writer = writer_for(run, grace_s=grace, report_once=self._report_once)

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

    def log_metrics(self, values: Mapping[str, object], step: object = None) -> None:
        """Append one line of ``values`` (at ``step``) to this rank's metrics file and
        remember each as the metric's last value; ``run.json`` gets them at its next
        write (the heartbeat's, the final one), not at every call. What cannot be
        recorded is left out with one warning per name (:meth:`_append`)."""
        checked, at = self._append(METRICS_KIND, values, step)
        if checked:
            self._listener.metrics(checked, at)

    def log_summary(self, values: Mapping[str, object]) -> None:
        """Append one summary line of ``values`` to this rank's metrics file; they
        become the record's ``summary`` (a name logged again replaces its value)."""
        checked, _ = self._append(SUMMARY_KIND, values, None)
        if checked:
            self._listener.summary(checked)

    def _append(
        self, kind: str, values: Mapping[str, object], step: object
    ) -> tuple[dict[str, float], int | None]:
        """Write the line of what ``values`` holds that can be recorded, at ``step``.

        A bad name or value never stops the caller's training: it is left out and the
        run's log warns about it, once per name for the run (a bad step: the line has
        none). ``LifecycleError`` outside the run (no run directory, or it has ended).
        """
        with self._lock:
            record = self._record
            if record is None or self._finished:
                where = "has ended" if self._finished else "has no run directory yet"
                raise LifecycleError(f"cannot log {kind}: the run {where}")
            checked, problems = checked_values(values)
            try:
                at = checked_step(step)
            except ValueError as exc:
                at = None
                problems.append(("step", f"{exc}; the values are recorded without one"))
            for name, why in problems:
                if name not in self._warned_metrics:
                    self._warned_metrics.add(name)
                    self._run.log.warning("%s (not recorded; said once per name for this run)", why)
            if not checked:
                return {}, at
            # One whole line or none: a reader never sees half of it (a full disk).
            attempt = len(record.attempts) or 1
            line = metrics_line(kind, self._run.rank, at, checked, _now(), attempt)
            append_whole(metrics_file(record.root, self._run.rank), line)
            if kind == SUMMARY_KIND:
                self._summary.update(checked)
            else:
                for name, value in checked.items():
                    self._last[name] = LastMetric(value, at)
        return dict(checked), at

    @property
    def _path(self) -> Path:
        assert self._record is not None
        return self._writer.record_path(self._record.root)

    def start(self) -> None:
        """Write the first record into the run directory just claimed, reopened or
        joined, keep space aside for the last writes, tell the job where the run is,
        and start the heartbeat. Raises the ``OSError`` of a failed write; nothing of
        the recorder's is left in the directory then."""
        paths = self._run.paths
        if paths is None or self._record is not None:
            return
        record = self._first_record(paths.root, paths.run_id)
        if len(record.attempts) > 1:
            record = self._logged_before(record)
        self._record = record
        self._run.attempt = len(record.attempts) or 1
        try:
            self._writer.create(paths.root, record)
        except BaseException as exc:
            path = self._path
            self._record = None
            if isinstance(exc, OSError):
                raise type(exc)(
                    exc.errno, f"cannot write the run record ({exc.strerror})", str(path)
                ) from exc
            raise
        self._writer.publish(record)
        self._listener.run_started(record)
        self._keep_tracker_links()
        if self._heartbeat_s > 0:
            self._heartbeat = _Heartbeat(self._heartbeat_s, self._beat)

    def _logged_before(self, record: RunRecord) -> RunRecord:
        """``record`` (a later attempt's first) with the last values earlier attempts
        logged, read from this rank's metrics file: the record keeps showing them until
        this attempt logs its own, which win."""
        lines = effective_lines(read_lines(metrics_file(record.root, self._run.rank)))
        metrics, summary = last_values(lines)
        for name, (value, step) in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._last[name] = LastMetric(value, step)
        for name, value in summary.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._summary[name] = value
        if not (self._last or self._summary):
            return record
        return attrs.evolve(record, metrics=dict(self._last), summary=dict(self._summary))

    def _keep_tracker_links(self) -> None:
        """Put where the listener mirrors the run into the record (one more write, only
        when that is new), so a crashed run can be reconciled there and the next
        attempt finds the same tracker run. A tracker an earlier attempt linked and
        this one does not stays in the record."""
        links = self._listener.tracker_links()
        if not links:
            return
        with self._lock:
            record = self._record
            if record is None or self._finished:
                return
            trackers = {**record.trackers, **links}
            if trackers == record.trackers:
                return
            self._record = attrs.evolve(record, trackers=trackers)
            self._update()

    def note_determinism_changes(self, changes: Mapping[str, Mapping[str, Any]]) -> None:
        """Record ``changes`` (see ``RunRecord.determinism_changes``) with the final write."""
        with self._lock:
            if self._record is not None and changes:
                self._record = attrs.evolve(self._record, determinism_changes=dict(changes))

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
            if final:
                # Ended before there was a run directory: rank 0 tells the waiting ranks
                # now rather than have them wait for one that never comes.
                self._finished = True
                _, error = outcome_of(self._machine)
                self._writer.publish(None, failed=str(error) if error else "the run ended early")
            return
        if not record.ok and record.step not in MACHINE_STEPS and self._run.logger is not None:
            # Told before the rollback, so the run's log is still open.
            exc = record.exception
            if isinstance(exc, Exception):
                # The step's error reaches its caller (the command prints one line
                # naming this file, the library raises it): the traceback is for the
                # log file only, never a screenful on the console.
                self._run.logger.error(
                    "step %r failed: %s",
                    record.step,
                    exc,
                    exc_info=(type(exc), exc, exc.__traceback__),
                    extra=FILE_ONLY,
                )
        if not final:
            self._follow(record, final)
            return
        self._stop_heartbeat()
        root = self._record.root
        self._writer.release_reserve(root)
        try:
            self._follow(record, final)
        finally:
            self._writer.discard_reserve(root)

    def _follow(self, record: TransitionRecord, final: bool) -> None:
        """Journal ``record``, fold it into the record, write the record when a reader
        would learn something new, and tell the listener."""
        assert self._machine is not None and self._record is not None
        with self._lock:
            before = self._record
            phases = dict(before.phases)
            history = self._machine.history
            for item in self._writer.journal(before.root, history, len(before.attempts)):
                if item.ok:
                    phases[item.step] = round(phases.get(item.step, 0.0) + item.duration_s, 6)
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
        self._listener.transition(record)
        if not final:
            # A tracker may link its run only once the run holds its lock (MLflow does).
            self._keep_tracker_links()
        if final:
            ended = self.record
            assert ended is not None
            self._listener.run_ended(ended)

    def _first_record(self, root: Path, run_id: str) -> RunRecord:
        assert self._machine is not None
        run = self._run
        history = self._machine.history
        invocation = record_invocation()
        known = {field.name for field in attrs.fields(RunRecord)}
        pid = os.getpid()
        now = _now()
        started_at, attempts, trackers = self._writer.open_attempt(
            root, history[0].started_at if history else now
        )
        return RunRecord(
            run_id=run_id,
            root=root,
            status=RUNNING,
            state=self._machine.state.value,
            started_at=started_at,
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
            entry_module=self._entry_module or invocation["entry_module"],
            entry=run.entry,
            python=invocation["python"],
            package_version=__version__,
            job=job_key(run.launch, run.cfg.config_hash()),
            scheduler=scheduler_job(),
            config_hash=run.cfg.config_hash(),
            restart_count=run.launch.restart_count,
            sweep=None if run.sweep is None else run.sweep[0],
            sweep_member=None if run.sweep is None else run.sweep[1],
            rerun_of=None if run.rerun_of is None else str(run.rerun_of),
            attempts=attempts,
            trackers=trackers,
            extra={key: value for key, value in invocation.items() if key not in known},
        )

    def stop_waiting(self, *_: object) -> None:
        """Stop waiting for the other ranks' records (a signal came: end now)."""
        self._writer.stop_waiting()

    def _finish(self, record: TransitionRecord) -> None:
        assert self._machine is not None and self._record is not None
        status, error = outcome_of(self._machine)
        exc = self._machine.ended_by
        interruption = None
        if isinstance(exc, RunInterrupted) and status == INTERRUPTED:
            status, interruption = self._writer.interruption(exc, self._record)
            self._record = attrs.evolve(self._record, interruption=interruption)
        status, error, failed_rank = self._writer.outcome(self._record, status, error)
        self._finished = True
        ended = _now()
        phases = dict(self._record.phases)
        spans = pipeline_spans(self._machine.history)
        if spans and spans[-1].until == len(self._machine.history) - 1:
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
            attempts=closed_attempts(
                self._record.attempts,
                ended,
                status,
                error,
                failed_rank=failed_rank,
                interruption=interruption,
            ),
        )
        failure = self._write(last=True)
        if failure is not None:
            self._report(
                f"the run ended {status}, but {self._path} could not be updated "
                f"({failure}); it still holds the record written before"
            )

    def _write(self, *, last: bool = False) -> OSError | None:
        """Replace the record's file with the record (``last``: the final write); the
        error when that failed."""
        assert self._record is not None
        if self._last or self._summary:
            self._record = attrs.evolve(
                self._record, metrics=dict(self._last), summary=dict(self._summary)
            )
        try:
            self._writer.write(self._record.root, self._record, last=last)
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

    def _beat(self) -> bool:
        """Refresh ``heartbeat_at``; False once the record is final (the beats stop)."""
        with self._lock:
            if self._finished or self._record is None:
                return False
            self._record = attrs.evolve(self._record, heartbeat_at=_now())
            self._update()
        return True

    def _stop_heartbeat(self) -> None:
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.stop()
