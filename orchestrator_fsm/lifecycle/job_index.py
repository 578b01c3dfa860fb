"""The job index: rank 0's word to the other ranks of a job on where its run is.

A job (one torchrun launch, one SLURM job or step, with its restarts and requeues) has
one run directory. Rank 0 publishes a :class:`JobEntry` for it at
``<output_dir>/.jobs/<job key>.json`` (:func:`~orchestrator_fsm.layout.job_entry_file`):
where the run is, or why there is none. The other ranks read it to join the run
(``phases/joining.py``), and a restarted rank 0 reads it to continue the run as a new
attempt. Both sides use this module, so what is written is what is read.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from orchestrator_fsm._fs import atomic_write_text, slugify
from orchestrator_fsm.layout import job_entry_file
from orchestrator_fsm.status import FAILED

if TYPE_CHECKING:
    from orchestrator_fsm.distributed import Launch

__all__ = ["JobEntry", "job_key", "read_job_entry", "write_job_entry"]


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


def write_job_entry(output_dir: Path | str, entry: JobEntry) -> Path:
    """Publish ``entry`` in the job index of ``output_dir`` (atomically: a reader sees
    the previous entry or this one, never half of it) and return its path. Raises the
    ``OSError`` of a failed write."""
    path = job_entry_file(output_dir, entry.job)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(entry.to_json(), indent=2, sort_keys=True) + "\n")
    return path
