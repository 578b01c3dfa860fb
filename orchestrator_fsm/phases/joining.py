"""Phase 3 on ranks other than 0: finding the run directory rank 0 made.

A job (one torchrun launch, one SLURM job or step, one launch keyed by its rendezvous
endpoint, one run in a ``torch.distributed`` process group; with its restarts and
requeues) has one run directory. Rank 0 makes it, or reopens it on a restart, and says
where in the job's entry (``lifecycle/job_index.py``): a file in the job index, and,
when a process group is initialised, the group's own store. Every other rank, on any
node that shares the file system, reads that entry (from the store when there is a
group, else from the file) and waits for rank 0's record to reach READY. If rank 0
fails first, its entry or its record says so and the waiting ranks fail at once with
rank 0's error instead of hanging; every wait is bounded by
``infrastructure.join_timeout_s``. Rank 0 never waits for the other ranks here.

A poll reads two files whatever the job's size or history: the entry and rank 0's
``run.json`` (not its journal, not the other ranks' records in ``ranks/``, which on a
restart still hold every rank of the attempt before). Polls start fast and slow down
to a longest sleep that grows with the world size, each sleep drawn at random from
its second half, so the ranks of a large job neither poll in lockstep nor, together,
more than about 2,000 times a second (``benchmarks/README.md``, "Joining one run").
"""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from orchestrator_fsm._system import process_started_at
from orchestrator_fsm.errors import InfrastructureError
from orchestrator_fsm.layout import RUN_FILE, RunPaths, job_entry_file
from orchestrator_fsm.lifecycle.job_index import (
    GroupStoreGone,
    JobEntry,
    job_key,
    keyed_by_rendezvous,
    read_group_entry,
    read_job_entry,
)
from orchestrator_fsm.status import COMPLETED, FAILED, INTERRUPTIONS, REFUSED

if TYPE_CHECKING:
    from orchestrator_fsm.lifecycle.record import RunRecord
    from orchestrator_fsm.run_context import RunContext

__all__ = ["step"]

# An entry older than this process (by more than the slack, for clocks of other nodes)
# belongs to an earlier launch that happened to have the same job key.
_CLOCK_SLACK_S: Final = 120.0
_FIRST_POLL_S: Final = 0.02
_LONGEST_POLL_S: Final = 0.5
"""The longest sleep between polls in a job of up to 750 ranks (how late a waiting rank
may notice rank 0's READY)."""
_JOB_POLLS_PER_S: Final = 2000.0
"""About how often all waiting ranks of a large job together poll, once they poll at
their slowest: their longest sleep grows with the world size to keep it so."""
_READY_STATES: Final = frozenset({"ready", "reported", "cleaned"})


def _ready_root(
    entry: JobEntry | None, restart_count: int, not_before: datetime, window: _Window | None
) -> Path | None:
    """The run directory once rank 0's record of this attempt is READY; raises
    ``InfrastructureError`` when rank 0 has failed; None while there is nothing yet."""
    if entry is None or entry.restart_count != restart_count or entry.written_at < not_before:
        return None
    if window is not None and not window.holds(entry.started_at):
        return None  # a rank 0 of another launch on the same endpoint
    if entry.failed is not None:
        raise InfrastructureError(f"rank 0 failed before its run directory existed: {entry.failed}")
    if entry.root is None:
        return None
    record = _rank_0_record(entry.root)
    if record is None:
        return None
    if record.attempts and record.attempts[-1].restart_count != restart_count:
        return None  # still the record of the attempt before
    if record.status in (FAILED, *INTERRUPTIONS, REFUSED):
        error = f": {record.error} (step {record.error.step})" if record.error else ""
        raise InfrastructureError(f"rank 0's run {record.run_id} ended {record.status}{error}")
    if record.state in _READY_STATES or record.status == COMPLETED:
        return entry.root
    return None


def _rank_0_record(root: Path) -> RunRecord | None:
    """Rank 0's own record in ``root``: its ``run.json`` alone (one file, whatever the
    world size and the attempts before); None while it cannot be read as one."""
    from orchestrator_fsm.lifecycle.record import RunRecord

    try:
        with open(root / RUN_FILE, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None  # not written yet, or being replaced on a file system without rename
    return RunRecord.from_json(data, root) if isinstance(data, dict) else None


def _longest_sleep(world_size: int) -> float:
    """The longest sleep between two polls of one waiting rank: 0.5 s, or more in a job
    so large that its ranks polling that often would load a shared file system. Sleeps
    are drawn from the second half of the current delay (on average 3/4 of it), so at
    the longest, ``world_size`` ranks poll about ``_JOB_POLLS_PER_S`` times a second."""
    return max(_LONGEST_POLL_S, world_size * 4 / (3 * _JOB_POLLS_PER_S))


@attrs.frozen
class _Window:
    """The start window of a job keyed by its rendezvous endpoint: its rank 0 started
    no more than ``width`` before or after this process (give or take the clocks of
    other nodes). Launches on one endpoint further apart are different jobs."""

    started_at: datetime
    width: timedelta

    def holds(self, rank_0_started_at: datetime) -> bool:
        return abs(rank_0_started_at - self.started_at) <= self.width


def _group_entry(job: str, run: RunContext) -> JobEntry | None:
    try:
        return read_group_entry(job)
    except GroupStoreGone as exc:
        raise InfrastructureError(
            f"rank {run.rank} of {run.world_size} lost the process group's store while "
            f"waiting for rank 0's run directory ({exc}): rank 0's process is gone"
        ) from exc


def step(run: RunContext) -> None:
    """Phase 3 on rank N > 0: wait (``infrastructure.join_timeout_s``) until rank 0's
    run directory for this job and attempt is READY, then use it as ``run.paths`` and
    start this rank's own record in it.

    Raises ``InfrastructureError`` when nothing ties this rank to a rank 0 (the table
    sends such a rank on without a run directory instead), when rank 0 failed, when
    the process group's store is gone, or when the wait runs out.
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
    started = process_started_at()
    not_before = started - timedelta(seconds=_CLOCK_SLACK_S)
    timeout = cfg.infrastructure.join_timeout_s
    window = (
        _Window(started, timedelta(seconds=timeout + _CLOCK_SLACK_S))
        if keyed_by_rendezvous(launch) and launch.group_run is None
        else None
    )
    in_group = launch.group_run is not None
    where = "the process group's store" if in_group else f"entry {entry_path}"
    deadline = time.monotonic() + timeout
    delay = _FIRST_POLL_S
    longest = _longest_sleep(run.world_size)
    # A generator of its own: the global one is the user's, seeded alike on every rank
    # by the determinism phase (the ranks would sleep in lockstep, and draws from it
    # would change the user's random numbers).
    jitter = random.Random()
    while True:
        entry = _group_entry(key, run) if in_group else read_job_entry(entry_path)
        root = _ready_root(entry, launch.restart_count, not_before, window)
        if root is not None:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            raise InfrastructureError(
                f"rank {run.rank} waited {timeout:g}s for rank 0's run directory (job "
                f"{key!r}, {where}) and it never became ready; raise "
                "infrastructure.join_timeout_s if rank 0 is slow to start"
            )
        time.sleep(min(jitter.uniform(delay / 2, delay), left))
        delay = min(delay * 1.5, longest)
    run.paths = RunPaths.from_root(root)
    run.start_record()
