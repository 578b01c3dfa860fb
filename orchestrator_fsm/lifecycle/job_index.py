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
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from orchestrator_fsm._fs import atomic_write_text, slugify
from orchestrator_fsm._system import process_started_at
from orchestrator_fsm.layout import job_entry_file
from orchestrator_fsm.status import FAILED

if TYPE_CHECKING:
    from orchestrator_fsm.distributed import Launch

__all__ = [
    "GroupStoreGone",
    "JobEntry",
    "job_key",
    "keyed_by_rendezvous",
    "read_group_entry",
    "read_job_entry",
    "write_job_entry",
]

#: Where rank 0 puts the entry in the process group's store (plus the job key).
_STORE_PREFIX: Final = "orchestrator_fsm/jobs/"


class GroupStoreGone(Exception):
    """The process group's store stopped answering (its host, rank 0, is gone)."""


def job_key(launch: Launch, config_hash: str) -> str | None:
    """The name of the job's entry, the same on every rank of one job; None when the
    process shares nothing with a rank 0 (a plain process gets a fresh run directory
    every time, and a rank above 0 then runs without one).

    First match: the launcher's job id (SLURM job, torchrun's run id); the rendezvous
    endpoint ``MASTER_ADDR:MASTER_PORT`` with the world size, for launchers that name
    no job (PyTorchJob, DeepSpeed, MPI-style, ``mp.spawn`` with those variables); for a
    single-node torchrun without a run id, its agent process; for a process group
    without any of these, the group itself (its ranks meet through its store, see
    :func:`read_group_entry`). The config hash always ends the key, and the run's number
    in its process group (``Launch.group_run``) is in it when there is a group.
    """
    if launch.job_id is not None:
        base = launch.job_id
    elif launch.rendezvous is not None:
        base = f"rdzv-{launch.rendezvous}-w{launch.world_size}"
    elif launch.launcher == "torchrun" and launch.world_size == launch.local_world_size:
        # Every worker of one torchrun agent is its child, across elastic restarts too.
        base = f"torchrun-{socket.gethostname()}-{os.getppid()}"
    elif launch.group_run is not None:
        base = f"group-w{launch.world_size}"
    else:
        return None
    if launch.group_run is not None:
        base = f"{base}-g{launch.group_run}"
    return f"{slugify(base, max_length=100, fallback='job')}-{config_hash[:12]}"


def keyed_by_rendezvous(launch: Launch) -> bool:
    """Whether :func:`job_key` names ``launch``'s job by its rendezvous endpoint, which
    later launches may reuse: a joining rank then also checks that rank 0 started
    within its start window."""
    return launch.job_id is None and launch.rendezvous is not None


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
    started_at: datetime = attrs.field(factory=process_started_at)
    """When rank 0's process started (by default: the process making the entry, which
    is rank 0), for the start window of a job keyed by its rendezvous endpoint."""

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
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
        return _entry_of(path.read_text(encoding="utf-8"))
    except OSError:
        return None


def _entry_of(text: str) -> JobEntry | None:
    try:
        data = json.loads(text)
        root = data.get("root")
        started = data.get("started_at")
        return JobEntry(
            job=str(data["job"]),
            restart_count=int(data["restart_count"]),
            written_at=datetime.fromisoformat(str(data["written_at"])),
            root=None if root is None else Path(root),
            run_id=data.get("run_id"),
            attempt=data.get("attempt"),
            config_hash=data.get("config_hash"),
            failed=data.get(FAILED),
            # An entry of an older version: rank 0 started when it wrote it, at the latest.
            started_at=datetime.fromisoformat(str(started or data["written_at"])),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def write_job_entry(output_dir: Path | str, entry: JobEntry) -> Path:
    """Publish ``entry`` in the job index of ``output_dir`` (atomically: a reader sees
    the previous entry or this one, never half of it) and return its path. Raises the
    ``OSError`` of a failed write."""
    path = job_entry_file(output_dir, entry.job)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(entry.to_json(), indent=2, sort_keys=True) + "\n"
    atomic_write_text(path, text)
    _tell_group(entry.job, text)
    return path


def _group_store() -> Any | None:
    """The key-value store of the initialised default process group, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def _tell_group(job: str, text: str) -> None:
    # The ranks of a process group learn the entry from its store rather than from the
    # file: the file is found by name, which other launches may share; the store is
    # this group's own. Rank 0 never waits on it (a set returns at once).
    store = _group_store()
    if store is None:
        return
    try:
        store.set(_STORE_PREFIX + job, text)
    except Exception:  # any failure of a store
        # The other ranks then wait out their join timeout; the file entry stands.
        return


def read_group_entry(job: str) -> JobEntry | None:
    """The entry rank 0 put for ``job`` in the process group's store; None while there
    is none (or no group). Raises :class:`GroupStoreGone` when the store does not
    answer: in a group initialised over TCP it lives in rank 0's process."""
    store = _group_store()
    if store is None:
        return None
    key = _STORE_PREFIX + job
    try:
        if not store.check([key]):
            return None
        value = store.get(key)
    except Exception as exc:  # a store raises errors of many types
        raise GroupStoreGone(str(exc) or type(exc).__name__) from exc
    return _entry_of(bytes(value).decode("utf-8"))
