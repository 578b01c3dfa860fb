"""Phase 3 on ranks other than 0: finding the run directory rank 0 made.

A job (one torchrun launch, one SLURM job or step, with its restarts and requeues) has
one run directory. Rank 0 makes it, or reopens it on a restart, and says where in the
job's entry (``lifecycle/job_index.py``); every other rank, on any node that
shares the file system, waits for that entry and for rank 0's record to reach READY.
No process group is needed. If rank 0 fails first, its entry or its record says so and
the waiting ranks fail at once with rank 0's error instead of hanging.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

from orchestrator_fsm._system import process_started_at
from orchestrator_fsm.errors import InfrastructureError
from orchestrator_fsm.layout import RunPaths, job_entry_file
from orchestrator_fsm.lifecycle.job_index import JobEntry, job_key, read_job_entry
from orchestrator_fsm.status import COMPLETED, FAILED, INTERRUPTIONS, REFUSED

if TYPE_CHECKING:
    from orchestrator_fsm.run_context import RunContext

__all__ = ["step"]

# An entry older than this process (by more than the slack, for clocks of other nodes)
# belongs to an earlier launch that happened to have the same job key.
_CLOCK_SLACK_S: Final = 120.0
_FIRST_POLL_S: Final = 0.02
_LONGEST_POLL_S: Final = 0.5
_READY_STATES: Final = frozenset({"ready", "reported", "cleaned"})


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
    if record.status in (FAILED, *INTERRUPTIONS, REFUSED):
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
