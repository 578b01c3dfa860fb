"""What a rank writes of the run's record: rank 0 and rank N, one class each.

The recorder (``lifecycle/recorder.py``) keeps one record per process and asks the
writer chosen for its rank (:func:`writer_for`, once) where the record goes and what
else the rank owes the job:

- Rank 0 (:class:`RankZeroWriter`) writes ``run.json`` with the disk reserve beside
  it, the journal, the job's entry other ranks read (``lifecycle/job_index.py``) and
  the run's attempts, and at its end folds the other ranks' records into the job's
  outcome.
- Rank N (:class:`RankWriter`) writes only ``ranks/rank<N>.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from orchestrator_fsm.errors import RunInterrupted
from orchestrator_fsm.layout import RESERVE_FILE, RUN_FILE, job_entry_file, rank_file
from orchestrator_fsm.lifecycle.ending import Interruption, ending_of
from orchestrator_fsm.lifecycle.job_index import JobEntry, job_key, write_job_entry
from orchestrator_fsm.lifecycle.record import (
    PIPELINE_STEP,
    Attempt,
    ErrorSummary,
    RunRecord,
    read_ranks,
    read_run,
)
from orchestrator_fsm.lifecycle.record_files import (
    Journal,
    discard_reserve,
    keep_reserve,
    release_reserve,
    write_record,
)
from orchestrator_fsm.redaction import redact_secrets
from orchestrator_fsm.status import COMPLETED, CRASHED, FAILED, INTERRUPTED, INTERRUPTIONS, RUNNING

if TYPE_CHECKING:
    from orchestrator_fsm.lifecycle.machine import TransitionRecord
    from orchestrator_fsm.run_context import RunContext

__all__ = [
    "RANKS_GRACE_ENV",
    "RANKS_GRACE_S",
    "RankWriter",
    "RankZeroWriter",
    "closed_attempts",
    "ranks_grace_from_env",
    "writer_for",
]

#: How long rank 0, at its end, waits by default for the other ranks' records to be final.
RANKS_GRACE_S: Final = 30.0
#: The environment variable that sets that wait in seconds (read once per run).
RANKS_GRACE_ENV: Final = "ORCHESTRATOR_FSM_RANKS_GRACE_S"

#: How the recorder reports a write failure once per kind: ``(kind, line)``.
ReportOnce = Callable[[str, str], None]


def ranks_grace_from_env() -> float:
    """The wait of :data:`RANKS_GRACE_ENV` when it holds a number >= 0, else
    :data:`RANKS_GRACE_S`."""
    text = os.environ.get(RANKS_GRACE_ENV, "").strip()
    try:
        value = float(text) if text else RANKS_GRACE_S
    except ValueError:
        return RANKS_GRACE_S
    return value if value >= 0 else RANKS_GRACE_S


def _now() -> datetime:
    return datetime.now(timezone.utc)


class RankWriter:
    """What a rank writes of the run's record besides the record itself, as rank N > 0
    does: its own record in ``ranks/rank<N>.json`` of rank 0's run directory and
    nothing else (rank 0 speaks for the job). :class:`RankZeroWriter` is rank 0's."""

    def __init__(self, run: RunContext) -> None:
        self._run = run

    def record_path(self, root: Path) -> Path:
        """Where this rank's record lives in the run directory ``root``."""
        return rank_file(root, self._run.rank)

    def open_attempt(
        self, root: Path, started_at: datetime
    ) -> tuple[datetime | None, tuple[Attempt, ...], Mapping[str, Mapping[str, str]]]:
        """When the run started (its first attempt), the attempts the first record
        lists: the earlier ones this rank's record kept, then this one (started at
        ``started_at``), and where the earlier attempts mirrored the run (the record's
        ``trackers``, so a tracker can reattach to the same run)."""
        previous = _read_record(self.record_path(root))
        return _next_attempts(self._run, previous, started_at)

    def create(self, root: Path, record: RunRecord) -> None:
        """Write the first record (and whatever goes with it); raises the error of a
        failed write, leaving none of its files behind."""
        path = self.record_path(root)
        path.parent.mkdir(exist_ok=True)
        write_record(path, record)

    def write(self, root: Path, record: RunRecord, *, last: bool = False) -> None:
        """Replace this rank's record in ``root`` with ``record`` (``last``: its final
        write); raises the ``OSError`` of a failed write (the previous file stays)."""
        write_record(self.record_path(root), record)

    def publish(self, record: RunRecord | None, failed: str | None = None) -> None:
        """Tell the job where the run is (``record``), or that it failed before its
        run directory existed (``failed``); rank N has nothing to tell."""

    def journal(
        self, root: Path, history: Sequence[TransitionRecord], attempt: int
    ) -> Sequence[TransitionRecord]:
        """Journal the transitions new since the last call and return them; rank N
        keeps no journal."""
        return ()

    def interruption(
        self, interrupt: RunInterrupted, record: RunRecord
    ) -> tuple[str, Interruption]:
        """The status and :class:`Interruption` of the run ``record`` describes, which
        ``interrupt`` ended; rank N records the signal alone (rank 0 speaks for the
        job, and asks the scheduler)."""
        return INTERRUPTED, Interruption(str(interrupt), interrupt.received_at)

    def outcome(
        self, record: RunRecord, status: str, error: ErrorSummary | None
    ) -> tuple[str, ErrorSummary | None, int | None]:
        """The job's outcome (status, error, failed rank) given this rank's; rank N
        answers for itself only."""
        return status, error, None

    def release_reserve(self, root: Path) -> None:
        """Hand back the space kept aside for the last writes; rank N keeps none."""

    def discard_reserve(self, root: Path) -> None:
        """Remove what is left of the reserve once the last write is done or failed."""

    def stop_waiting(self) -> None:
        """Stop any wait for other ranks (a signal asks the process to end)."""


class RankZeroWriter(RankWriter):
    """Rank 0: ``run.json`` and its reserve, the journal, the job's entry, the attempts,
    and the job's outcome folded from the other ranks' records, for which a rank 0
    that completed waits up to ``grace_s`` seconds."""

    def __init__(self, run: RunContext, *, grace_s: float, report_once: ReportOnce) -> None:
        super().__init__(run)
        self._grace_s = grace_s
        self._report_once = report_once
        self._journal = Journal(report_once)
        self._stop_waiting = threading.Event()
        # The emptied reserve, once released: the last write goes through it.
        self._through: Path | None = None

    def record_path(self, root: Path) -> Path:
        return root / RUN_FILE

    def open_attempt(
        self, root: Path, started_at: datetime
    ) -> tuple[datetime | None, tuple[Attempt, ...], Mapping[str, Mapping[str, str]]]:
        previous = read_run(root) if self._run.resumed else None
        return _next_attempts(self._run, previous, started_at)

    def interruption(
        self, interrupt: RunInterrupted, record: RunRecord
    ) -> tuple[str, Interruption]:
        """What the scheduler of ``record``'s job (or the terminal) tells of the signal;
        see :func:`~orchestrator_fsm.lifecycle.ending.ending_of`."""
        since = record.attempts[-1].started_at if record.attempts else record.started_at
        return ending_of(interrupt.signum, interrupt.received_at, record.scheduler, since=since)

    def create(self, root: Path, record: RunRecord) -> None:
        try:
            keep_reserve(root, write_record(self.record_path(root), record))
        except BaseException:
            if not self._run.resumed:
                for name in (RUN_FILE, RESERVE_FILE):
                    with contextlib.suppress(OSError):
                        os.unlink(root / name)
            raise

    def publish(self, record: RunRecord | None, failed: str | None = None) -> None:
        run = self._run
        key = job_key(run.launch, run.cfg.config_hash())
        if key is None:
            return
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
        try:
            write_job_entry(run.cfg.telemetry.output_dir, entry)
        except OSError as exc:
            if record is not None:
                raise
            # Nothing else can be done for the other ranks; they will time out.
            path = job_entry_file(run.cfg.telemetry.output_dir, key)
            self._report_once("job", f"could not write the job entry {path} ({exc})")

    def journal(
        self, root: Path, history: Sequence[TransitionRecord], attempt: int
    ) -> Sequence[TransitionRecord]:
        return self._journal.append(root, history, attempt)

    def outcome(
        self, record: RunRecord, status: str, error: ErrorSummary | None
    ) -> tuple[str, ErrorSummary | None, int | None]:
        """Rank 0's outcome folded with the other ranks' records: the job is failed (or
        interrupted) when any rank was, with the error of the rank that went wrong
        first. A rank 0 that completed waits up to ``grace_s`` for the ranks to end
        (not once :meth:`stop_waiting` was called)."""
        run = self._run
        if run.world_size < 2:
            return status, error, None
        root, attempt = record.root, run.launch.restart_count
        # Only a rank 0 that ended well waits: one that is failing or interrupted (a
        # launcher tearing the job down) writes its record at once, before it is killed.
        deadline = time.monotonic() + (self._grace_s if status == COMPLETED else 0.0)
        ranks = read_ranks(root, attempt)
        while not self._stop_waiting.is_set() and time.monotonic() < deadline:
            if len([r for r in ranks if r.effective_status != RUNNING]) >= run.world_size - 1:
                break
            self._stop_waiting.wait(0.1)
            ranks = read_ranks(root, attempt)
        mine = attrs.evolve(record, status=status, error=error, ended_at=_now())
        # A signal rank 0 took too is the job's (first_failure leaves out the ranks that
        # took it, or failed after it): no rank is blamed for it, whichever ended first.
        first = attrs.evolve(mine, ranks=ranks).first_failure
        if first is None or first.rank in (None, 0):
            return status, error, None
        if first.status == RUNNING:  # its process vanished
            summary = ErrorSummary("RankCrashed", f"rank {first.rank} is gone", PIPELINE_STEP)
        else:
            summary = first.error or ErrorSummary("RankFailed", "", PIPELINE_STEP)
        worst = first.status if first.status in INTERRUPTIONS else FAILED
        return worst, summary, first.rank

    def write(self, root: Path, record: RunRecord, *, last: bool = False) -> None:
        # Through the emptied reserve: renamed over the record (removed on failure,
        # or by discard_reserve when the write failed before reaching it).
        write_record(self.record_path(root), record, through=self._through if last else None)
        if last:
            self._through = None

    def release_reserve(self, root: Path) -> None:
        self._through = release_reserve(root)

    def discard_reserve(self, root: Path) -> None:
        if self._through is not None:
            self._through = None
            discard_reserve(root)

    def stop_waiting(self) -> None:
        self._stop_waiting.set()


def writer_for(run: RunContext, *, grace_s: float, report_once: ReportOnce) -> RankWriter:
    """The writer of ``run``'s rank."""
    if run.is_main_process:
        return RankZeroWriter(run, grace_s=grace_s, report_once=report_once)
    return RankWriter(run)


def closed_attempts(
    attempts: tuple[Attempt, ...],
    ended_at: datetime | None,
    status: str,
    error: ErrorSummary | None,
    *,
    failed_rank: int | None = None,
    interruption: Interruption | None = None,
) -> tuple[Attempt, ...]:
    """``attempts`` with the last one (this process's) ended: when, how, and why when
    it ended early: the signal and what told more (``interruption``), else the error,
    after ``rank N: `` when rank ``failed_rank``'s ended the job."""
    if not attempts:
        return attempts
    reason = None
    if status != COMPLETED:
        who = "" if not failed_rank else f"rank {failed_rank}: "
        if failed_rank is None and interruption is not None:
            what = str(interruption)
        elif error is not None:
            what = str(error)
        else:
            what = status
        reason = f"{who}{what}"
    last = attrs.evolve(attempts[-1], ended_at=ended_at, status=status, reason=reason)
    return (*attempts[:-1], last)


def _read_record(path: Path) -> RunRecord | None:
    """The record in ``path`` (a rank's own file), None when there is none to read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return RunRecord.from_json(data, path.parent) if isinstance(data, dict) else None


def _next_attempts(
    run: RunContext, previous: RunRecord | None, started_at: datetime
) -> tuple[datetime | None, tuple[Attempt, ...], Mapping[str, Mapping[str, str]]]:
    """When the run started, its attempts and its trackers: the attempts ``previous``
    (the record the last attempt left) lists, as they were written, then a new one
    started at ``started_at``, and ``previous``'s trackers. An attempt left
    ``running`` ended without closing its record: it is closed now as ``crashed`` at
    its last sign of life; a closed one is never rewritten."""
    attempts: tuple[Attempt, ...] = ()
    if previous is not None:
        earlier = previous.attempts or (
            Attempt(number=1, started_at=previous.started_at, pid=previous.pid),
        )
        if earlier[-1].status == RUNNING:
            ended = previous.ended_at or previous.heartbeat_at
            if previous.status == RUNNING:
                crashed = attrs.evolve(earlier[-1], ended_at=ended, status=CRASHED, reason=CRASHED)
                earlier = (*earlier[:-1], crashed)
            else:  # a record that ended without closing its attempts (an older version's)
                earlier = closed_attempts(
                    earlier,
                    ended,
                    previous.status,
                    previous.error,
                    failed_rank=previous.failed_rank,
                    interruption=previous.interruption,
                )
        attempts = earlier
    attempts += (
        Attempt(
            number=len(attempts) + 1,
            restart_count=run.launch.restart_count,
            started_at=started_at,
            pid=os.getpid(),
            host=socket.gethostname(),
            config_hash=run.cfg.config_hash(),
        ),
    )
    if previous is None:
        return started_at, attempts, {}
    return previous.started_at, attempts, previous.trackers
