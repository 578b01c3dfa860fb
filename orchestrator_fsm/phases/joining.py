"""Phase 3 on ranks other than 0: finding the run directory rank 0 made.

A job (one torchrun launch, one SLURM job or step, with its restarts and requeues) has
one run directory. Rank 0 makes it, or reopens it on a restart, and says where in the
job's entry ``<output_dir>/.jobs/<job key>.json``; every other rank, on any node that
shares the file system, waits for that entry and for rank 0's record to reach READY.
No process group is needed. If rank 0 fails first, its entry or its record says so and
the waiting ranks fail at once with rank 0's error instead of hanging.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from orchestrator_fsm._fs import slugify
from orchestrator_fsm._system import process_started_at
from orchestrator_fsm.errors import InfrastructureError
from orchestrator_fsm.layout import job_entry_file
from orchestrator_fsm.phases.filesystem import RunPaths
from orchestrator_fsm.status import COMPLETED, FAILED, INTERRUPTED, REFUSED, RUNNING

if TYPE_CHECKING:
    from orchestrator_fsm.distributed import Launch
    from orchestrator_fsm.phases.context import RunContext

__all__ = [
    "JobEntry",
    "job_key",
    "read_job_entry",
    "restarted_run",
    "step",
]

# An entry older than this process (by more than the slack, for clocks of other nodes)
# belongs to an earlier launch that happened to have the same job key.
_CLOCK_SLACK_S: Final = 120.0
_FIRST_POLL_S: Final = 0.02
_LONGEST_POLL_S: Final = 0.5
_READY_STATES: Final = frozenset({"ready", "reported", "cleaned"})


def job_key(launch: Launch, config_hash: str) -> str | None:
    """The name of the job's entry: the launcher's job id (or, for a single-node
    torchrun without one, its agent process) and the config; None when the launcher
    names no job (a plain process gets a fresh run directory every time)."""
    if launch.job_id is not None:
        base = launch.job_id
    elif launch.launcher == "torchrun" and launch.world_size == launch.local_world_size:
        # Every worker of one torchrun agent is its child, across elastic restarts too.
        base = f"torchrun-{socket.gethostname()}-{os.getppid()}"
    else:
        return None
    return f"{slugify(base, max_length=100, fallback='job')}-{config_hash[:12]}"


@attrs.frozen
class JobEntry:
    """Rank 0's word on where the job's run is (or why there is none)."""

    job: str
    restart_count: int
    written_at: datetime
    root: Path | None = None
    run_id: str | None = None
    attempt: int | None = None
    config_hash: str | None = None
    failed: str | None = None
    """Rank 0's error when it failed before its run directory existed."""

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "restart_count": self.restart_count,
            "written_at": self.written_at.isoformat(),
            "root": None if self.root is None else str(self.root),
            "run_id": self.run_id,
            "attempt": self.attempt,
            "config_hash": self.config_hash,
            "failed": self.failed,
        }


def read_job_entry(path: Path) -> JobEntry | None:
    """The entry at ``path``; None when there is none or it cannot be read as one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        root = data.get("root")
        return JobEntry(
            job=str(data["job"]),
            restart_count=int(data["restart_count"]),
            written_at=datetime.fromisoformat(str(data["written_at"])),
            root=None if root is None else Path(root),
            run_id=data.get("run_id"),
            attempt=data.get("attempt"),
            config_hash=data.get("config_hash"),
            failed=data.get(FAILED),
        )
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def _resumable(run: RunContext, root: Path) -> RunPaths:
    """``root`` as the run to continue, after checking it may be: it holds a record,
    that run is not live, and it ran this config (unless ``force_resume``)."""
    from orchestrator_fsm.lifecycle.record import read_run

    try:
        paths = RunPaths.from_root(root)
        record = read_run(paths.root)
    except (OSError, ValueError) as exc:
        raise InfrastructureError(f"cannot resume {root}: {exc}") from exc
    status = record.effective_status
    if status == RUNNING:
        raise InfrastructureError(
            f"cannot resume {paths.root}: its run is still running (pid {record.pid} on "
            f"{record.host})"
        )
    ours = run.cfg.config_hash()
    if record.config_hash not in (None, ours) and not run.force_resume:
        raise InfrastructureError(
            f"cannot resume {paths.root}: it ran another config (hash "
            f"{record.config_hash[:12]}, this one {ours[:12]}); resume with force to "
            "continue it anyway"
        )
    return paths


def restarted_run(run: RunContext) -> RunPaths | None:
    """The run directory to continue as a new attempt: the one the caller named
    (``resume``), or the one an earlier attempt of this job made when this is a restart
    (torchrun restart, SLURM requeue) of a job whose entry names one; else None.

    Raises ``InfrastructureError`` when the named directory cannot be resumed.
    """
    if run.resume_from is not None:
        return _resumable(run, run.resume_from)
    key = job_key(run.launch, run.cfg.config_hash())
    if key is None or run.launch.restart_count == 0:
        return None
    entry = read_job_entry(job_entry_file(run.cfg.telemetry.output_dir, key))
    if entry is None or entry.root is None or entry.config_hash != run.cfg.config_hash():
        return None
    try:
        return RunPaths.from_root(entry.root)
    except OSError:
        return None  # removed since: this attempt starts a fresh directory


def _ready_root(entry: JobEntry | None, restart_count: int, not_before: datetime) -> Path | None:
    """The run directory once rank 0's record of this attempt is READY; raises
    ``InfrastructureError`` when rank 0 has failed; None while there is nothing yet."""
    if entry is None or entry.restart_count != restart_count or entry.written_at < not_before:
        return None
    if entry.failed is not None:
        raise InfrastructureError(f"rank 0 failed before its run directory existed: {entry.failed}")
    if entry.root is None:
        return None
    from orchestrator_fsm.lifecycle.record import read_run

    try:
        record = read_run(entry.root)
    except (OSError, ValueError):
        return None
    if record.attempts and record.attempts[-1].restart_count != restart_count:
        return None  # still the record of the attempt before
    if record.status in (FAILED, INTERRUPTED, REFUSED):
        error = f": {record.error} (step {record.error.step})" if record.error else ""
        raise InfrastructureError(f"rank 0's run {record.run_id} ended {record.status}{error}")
    if record.state in _READY_STATES or record.status == COMPLETED:
        return entry.root
    return None


def step(run: RunContext) -> None:
    """Phase 3 on rank N > 0: wait (``infrastructure.join_timeout_s``) until rank 0's
    run directory for this job and attempt is READY, then use it as ``run.paths`` and
    start this rank's own record in it.

    Raises ``InfrastructureError`` when the launcher names no job (nothing tells the
    ranks they belong together), when rank 0 failed, or when the wait runs out.
    """
    cfg = run.cfg
    launch = run.launch
    key = job_key(launch, cfg.config_hash())
    if key is None:
        raise InfrastructureError(
            f"rank {run.rank} of {run.world_size} cannot find the run directory: the "
            "launcher names no job (give torchrun --rdzv-id for a multi-node job, or run "
            "under srun)"
        )
    entry_path = job_entry_file(cfg.telemetry.output_dir, key)
    not_before = process_started_at() - timedelta(seconds=_CLOCK_SLACK_S)
    timeout = cfg.infrastructure.join_timeout_s
    deadline = time.monotonic() + timeout
    delay = _FIRST_POLL_S
    while True:
        root = _ready_root(read_job_entry(entry_path), launch.restart_count, not_before)
        if root is not None:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            raise InfrastructureError(
                f"rank {run.rank} waited {timeout:g}s for rank 0's run directory (job "
                f"{key!r}, entry {entry_path}) and it never became ready; raise "
                "infrastructure.join_timeout_s if rank 0 is slow to start"
            )
        time.sleep(min(delay, left))
        delay = min(delay * 1.5, _LONGEST_POLL_S)
    run.paths = RunPaths.from_root(root)
    run.start_record()
