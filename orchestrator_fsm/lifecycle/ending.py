"""How a run a signal ended came to end, as far as something can tell.

A signal says little: SLURM sends the same SIGTERM for ``scancel``, a time limit, a
preemption and a requeue; torchrun sends it to every worker when one fails. Python's
signal handlers do not get the sender (no ``si_pid``), so rank 0 asks, once, what can
tell more (:func:`ending_of`), and records what it learned with the signal
(:class:`Interruption`):

- inside a SLURM job (:class:`SchedulerJob`), ``scontrol show job`` (bounded by
  :data:`SCONTROL_TIMEOUT_S`): ``timeout`` for JobState TIMEOUT/DEADLINE or Reason
  TimeLimit; ``preempted`` for JobState PREEMPTED, a PreemptTime, JobState REQUEUED or
  a Restarts count above the one the job started with; ``cancelled`` for JobState
  CANCELLED. While SLURM kills a job it shows JobState COMPLETING whatever the cause,
  so then the line slurmstepd writes to the job's output before it signals (``*** JOB
  28 ON n1 CANCELLED AT ... [DUE TO TIME LIMIT|PREEMPTION|JOB REQUEUE] ***``) decides.
  Last, the end time SLURM announced (``SLURM_JOB_END_TIME``, else scontrol's StartTime
  + TimeLimit): a signal at or after it is ``timeout``. A job that ended before this
  attempt started is not this one's (a copied or simulated job id) and says nothing;
- a SIGINT while the process is in its terminal's foreground group (where Ctrl-C
  sends it): ``cancelled``;
- anything else: ``interrupted``, with only the signal recorded. Nothing is guessed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import attrs

from orchestrator_fsm.distributed import env_text
from orchestrator_fsm.status import CANCELLED, INTERRUPTED, PREEMPTED, TIMEOUT

__all__ = [
    "SCONTROL_TIMEOUT_S",
    "Interruption",
    "SchedulerJob",
    "ending_of",
    "scheduler_job",
    "scontrol_job",
]

#: How long rank 0 waits for ``scontrol show job`` at the end of an interrupted run
#: (SLURM kills the job KillWait seconds after its SIGTERM, 30 s by default).
SCONTROL_TIMEOUT_S: Final = 2.0
#: How early before SLURM's announced end time a signal still counts as the time limit's
#: (SLURM checks time limits periodically, so its SIGTERM comes at or after that time).
_END_TIME_SLACK: Final = timedelta(seconds=2)
#: SLURM's job states that say a requeue (by ``scontrol requeue`` or a preemption).
_REQUEUED: Final = frozenset({"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _timestamp(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value is not None else None
    except ValueError:
        return None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@attrs.frozen
class SchedulerJob:
    """The scheduler's job this process runs in, as its raw ids: ``job_id`` (SLURM_JOB_ID,
    unique per array task too), ``array_job_id``/``array_task_id`` for a task of an
    array; ``restart_count`` (SLURM_RESTART_COUNT) and ``end_time``
    (SLURM_JOB_END_TIME) as the job announced them when this process started."""

    scheduler: str
    job_id: str
    array_job_id: str | None = None
    array_task_id: str | None = None
    restart_count: int = 0
    end_time: datetime | None = None

    @property
    def label(self) -> str:
        """How users name the job: ``<array job>_<task>`` for an array task, else the id."""
        if self.array_job_id is not None and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SchedulerJob | None:
        job_id = data.get("job_id")
        if job_id is None:
            return None
        restarts = data.get("restart_count")
        return cls(
            scheduler=str(data.get("scheduler") or "slurm"),
            job_id=str(job_id),
            array_job_id=_optional_str(data.get("array_job_id")),
            array_task_id=_optional_str(data.get("array_task_id")),
            restart_count=restarts if isinstance(restarts, int) else 0,
            end_time=_timestamp(data.get("end_time")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler,
            "job_id": self.job_id,
            "array_job_id": self.array_job_id,
            "array_task_id": self.array_task_id,
            "restart_count": self.restart_count,
            "end_time": _iso(self.end_time),
        }


def scheduler_job(environ: Mapping[str, str] | None = None) -> SchedulerJob | None:
    """The SLURM job ``environ`` (default ``os.environ``) names; None outside one."""
    env = os.environ if environ is None else environ
    job_id = env_text(env, "SLURM_JOB_ID", "SLURM_JOBID")
    if job_id is None:
        return None
    restarts = env_text(env, "SLURM_RESTART_COUNT") or "0"
    end = env_text(env, "SLURM_JOB_END_TIME")
    end_time = None
    if end is not None and end.isdigit():
        end_time = datetime.fromtimestamp(int(end), timezone.utc)
    return SchedulerJob(
        scheduler="slurm",
        job_id=job_id,
        array_job_id=env_text(env, "SLURM_ARRAY_JOB_ID"),
        array_task_id=env_text(env, "SLURM_ARRAY_TASK_ID"),
        restart_count=int(restarts) if restarts.isdigit() else 0,
        end_time=end_time,
    )


@attrs.frozen
class Interruption:
    """What ended a run that a signal stopped: the ``signal`` (its name), when this
    process ``received_at`` it, and ``evidence``: what told more than the signal (one
    line: the scheduler's words, the terminal), None when nothing did. SLURM's job
    state and reason at that moment, when it was asked, are kept as it gave them."""

    signal: str
    received_at: datetime | None = None
    evidence: str | None = None
    scheduler_state: str | None = None
    scheduler_reason: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Interruption:
        return cls(
            signal=str(data.get("signal") or "?"),
            received_at=_timestamp(data.get("received_at")),
            evidence=_optional_str(data.get("evidence")),
            scheduler_state=_optional_str(data.get("scheduler_state")),
            scheduler_reason=_optional_str(data.get("scheduler_reason")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "received_at": _iso(self.received_at),
            "evidence": self.evidence,
            "scheduler_state": self.scheduler_state,
            "scheduler_reason": self.scheduler_reason,
        }

    def __str__(self) -> str:
        return self.signal if self.evidence is None else f"{self.signal}; {self.evidence}"


#: Asks the scheduler about a job: its fields (``JobState``, ``Reason``...) or None.
JobQuery = Callable[[str], "Mapping[str, str] | None"]

_FIELD = re.compile(r"(\w+)=(\S*)")


def scontrol_job(job_id: str, timeout_s: float = SCONTROL_TIMEOUT_S) -> dict[str, str] | None:
    """The fields ``scontrol show job <job_id>`` prints (the first of each name); None
    when scontrol is missing, fails or takes longer than ``timeout_s``."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return None
    try:
        result = subprocess.run(
            [scontrol, "show", "job", job_id],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    fields: dict[str, str] = {}
    for name, value in _FIELD.findall(result.stdout):
        fields.setdefault(name, value)
    return fields or None


def _slurm_time(value: str | None) -> datetime | None:
    """A time as scontrol prints it (local, no zone); None for None/Unknown/N/A."""
    if not value or not value[:1].isdigit():
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value).astimezone(timezone.utc)
    return None


def _slurm_duration(value: str | None) -> timedelta | None:
    """A TimeLimit as scontrol prints it (``[days-]hh:mm:ss``, ``mm:ss``); None otherwise."""
    if not value or not value[:1].isdigit():
        return None
    days, _, clock = value.rpartition("-")
    parts = clock.split(":")
    if not days.isdigit() and days:
        return None
    if not all(part.isdigit() for part in parts) or not 1 <= len(parts) <= 3:
        return None
    numbers = [int(part) for part in parts]
    while len(numbers) < 3:
        numbers.insert(0, 0)
    hours, minutes, seconds = numbers
    return timedelta(days=int(days or 0), hours=hours, minutes=minutes, seconds=seconds)


#: The line slurmstepd writes to a job's (or step's) output before it signals its tasks:
#: ``*** JOB 9 ON n1 CANCELLED AT 2026-12-07T04:03:56 [DUE TO TIME LIMIT] ***``.
_STEPD_LINE = re.compile(
    r"\*\*\* (?:JOB|STEP) (?P<job>[\w.]+) ON \S+ CANCELLED AT (?P<at>\S+)"
    r"(?: DUE TO (?P<why>[A-Z ]+?))? \*\*\*"
)
#: What slurmstepd's ``DUE TO`` says, as a status (none: ``scancel``).
_DUE_TO: Final = {
    None: CANCELLED,
    "TIME LIMIT": TIMEOUT,
    "PREEMPTION": PREEMPTED,
    "JOB REQUEUE": PREEMPTED,
}
#: How long to look for that line (slurmstepd writes it as it signals; srun's copy of it
#: travels through srun's I/O) and how much of the file's end to read.
_STEPD_WAIT_S: Final = 1.0
_STEPD_TAIL: Final = 64 * 1024


def _stepd_line(
    job: SchedulerJob, fields: Mapping[str, str], since: datetime | None
) -> tuple[str, str] | None:
    """The status and the words of slurmstepd's line for ``job`` in the output files
    scontrol names (StdErr, StdOut), written at or after ``since``; None when none is
    found within :data:`_STEPD_WAIT_S`."""
    paths = dict.fromkeys(p for p in (fields.get("StdErr"), fields.get("StdOut")) if p)
    ids = {job.job_id, job.label}
    deadline = time.monotonic() + _STEPD_WAIT_S
    while True:
        for path in paths:
            try:
                with open(path, "rb") as handle:
                    handle.seek(max(0, os.fstat(handle.fileno()).st_size - _STEPD_TAIL))
                    tail = handle.read().decode("utf-8", "replace")
            except OSError:
                continue
            for match in reversed(list(_STEPD_LINE.finditer(tail))):
                at = _slurm_time(match["at"])
                if match["job"].split(".")[0] not in ids or at is None:
                    continue
                if since is not None and at < since.replace(microsecond=0) - _END_TIME_SLACK:
                    continue  # an earlier attempt's, in a file opened to append
                status = _DUE_TO.get(match["why"], INTERRUPTED)
                return status, f"SLURM: {match[0].strip('* ')}"
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _from_slurm(
    job: SchedulerJob,
    fields: Mapping[str, str] | None,
    received_at: datetime,
    since: datetime | None,
) -> tuple[str, str] | None:
    """The status SLURM's words give and the line that says so; None when they say none."""
    if fields is not None:
        state, reason = fields.get("JobState", ""), fields.get("Reason", "")
        said = f"SLURM says JobState={state} Reason={reason}"
        restarts = fields.get("Restarts", "")
        if state in ("TIMEOUT", "DEADLINE") or reason == "TimeLimit":
            return TIMEOUT, said
        if state == "PREEMPTED" or _slurm_time(fields.get("PreemptTime")) is not None:
            return PREEMPTED, f"{said} PreemptTime={fields.get('PreemptTime')}"
        requeued = restarts.isdigit() and int(restarts) > job.restart_count
        if state in _REQUEUED or requeued:
            line = _stepd_line(job, fields, since)
            more = f"; {line[1]}" if line is not None else ""
            return PREEMPTED, f"{said} Restarts={restarts}{more}"
        if state == "CANCELLED":
            return CANCELLED, said
        if state == "COMPLETING":
            # The job is ending and SLURM's state hides why (COMPLETING masks CANCELLED,
            # PREEMPTED...): slurmstepd's own line says it.
            line = _stepd_line(job, fields, since)
            if line is not None:
                return line
    end = job.end_time
    if end is None and fields is not None:
        start = _slurm_time(fields.get("StartTime"))
        limit = _slurm_duration(fields.get("TimeLimit"))
        end = None if start is None or limit is None else start + limit
    if end is not None and received_at >= end - _END_TIME_SLACK:
        return TIMEOUT, f"SLURM's end time {end.isoformat()} had come"
    return None


def _is_current(fields: Mapping[str, str], since: datetime | None, now: datetime) -> bool:
    """Whether the job scontrol described can be the one this attempt runs in: it did
    not end before the attempt started nor start after now (a job id from a copied or
    simulated environment may name another job of the cluster)."""
    ended = _slurm_time(fields.get("EndTime"))
    started = _slurm_time(fields.get("StartTime"))
    if since is not None and ended is not None and ended < since - _END_TIME_SLACK:
        return False
    return started is None or started <= now + _END_TIME_SLACK


def _in_terminal_foreground() -> bool:
    """Whether this process's group is its terminal's foreground group (Ctrl-C's target)."""
    try:
        fd = sys.stdin.fileno()
        return os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except (AttributeError, OSError, ValueError):
        return False


def ending_of(
    signum: int,
    received_at: datetime,
    job: SchedulerJob | None,
    *,
    since: datetime | None = None,
    query: JobQuery = scontrol_job,
    in_terminal_foreground: Callable[[], bool] = _in_terminal_foreground,
) -> tuple[str, Interruption]:
    """The status of a run that the signal ``signum`` (received at ``received_at``)
    ended, and the :class:`Interruption` to record: what SLURM says of ``job`` (asked
    with ``query``; ``since``: when this attempt started, so an earlier attempt's words
    are not taken for this one's), else Ctrl-C at the terminal, else ``interrupted``
    with the signal alone."""
    name = signal.Signals(signum).name
    if job is not None:
        fields = query(job.job_id)
        if fields is not None and not _is_current(fields, since, received_at):
            fields = None
        found = _from_slurm(job, fields, received_at, since)
        state = None if fields is None else fields.get("JobState")
        reason = None if fields is None else fields.get("Reason")
        if found is not None:
            status, evidence = found
            return status, Interruption(name, received_at, evidence, state, reason)
        if fields is not None:
            return INTERRUPTED, Interruption(name, received_at, None, state, reason)
    if signum == signal.SIGINT and in_terminal_foreground():
        return CANCELLED, Interruption(
            name, received_at, "SIGINT in its terminal's foreground (Ctrl-C)"
        )
    return INTERRUPTED, Interruption(name, received_at)
