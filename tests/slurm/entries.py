"""The entries (and the SIGUSR1 callback) the real-SLURM tests' jobs run.

Each leaves marker files in ``$MARK_DIR`` (the test's folder) saying what it saw, named
by rank and attempt (``SLURM_RESTART_COUNT``), so a test reads them without parsing logs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _mark(name: str, text: str = "") -> None:
    (Path(os.environ["MARK_DIR"]) / name).write_text(text or str(os.getpid()), encoding="utf-8")


def _attempt() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) + 1


def quick(orch: Any) -> None:
    """Say which rank ran, and end."""
    _mark(f"ran-rank{orch.rank}")


def linger(orch: Any) -> None:
    """Hold the run (and its lock) for 4 s, so that concurrent launches overlap."""
    _mark(f"live-rank{orch.rank}-{os.environ.get('SLURM_ARRAY_TASK_ID', '')}")
    time.sleep(4)


def sleepy(orch: Any) -> None:
    """Say the run is live, then wait until ``$MARK_DIR/stop`` exists (150 s at most)."""
    _mark(f"live-rank{orch.rank}-attempt{_attempt()}")
    stop = Path(os.environ["MARK_DIR"]) / "stop"
    deadline = time.monotonic() + 150
    while not stop.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def save(orch: Any, signum: int) -> None:
    """The SIGUSR1 callback: say which rank got it, in which attempt."""
    _mark(f"usr1-rank{orch.rank}-attempt{_attempt()}")


def fail_on_rank1(orch: Any) -> None:
    """Rank 1 raises; rank 0 waits a little and ends well."""
    if orch.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    time.sleep(1)


def ddp(orch: Any) -> None:
    """A gloo process group over the job's ranks: all_reduce each rank's number + 1."""
    import torch
    import torch.distributed as dist

    from orchestrator_fsm.distributed import slurm_master_endpoint

    slurm_master_endpoint()
    dist.init_process_group("gloo", rank=orch.rank, world_size=orch.world_size)
    try:
        total = torch.tensor([orch.rank + 1.0])
        dist.all_reduce(total)
        _mark(f"ddp-rank{orch.rank}", str(int(total.item())))
    finally:
        dist.destroy_process_group()
