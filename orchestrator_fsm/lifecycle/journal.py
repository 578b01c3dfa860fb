"""The run's own record on disk: ``run.json`` (its status) and ``lifecycle.jsonl``.

Both belong to the engine, not to any injectable, so a run whose injected parts fail
still leaves a true status behind. ``run.json`` is rewritten atomically (temporary
file, fsync, rename); ``lifecycle.jsonl`` gets one JSON object per transition.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from orchestrator_fsm._fs import atomic_write_json
from orchestrator_fsm.lifecycle.machine import TransitionRecord

__all__ = [
    "JOURNAL_FILE",
    "RUN_FILE",
    "RunJournal",
    "effective_status",
    "pid_is_alive",
    "read_run_file",
    "read_transitions",
]

RUN_FILE: Final = "run.json"
JOURNAL_FILE: Final = "lifecycle.jsonl"

STATUSES: Final = ("running", "completed", "failed", "interrupted")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


class RunJournal:
    """Writes ``run.json`` and appends to ``lifecycle.jsonl`` in one run directory."""

    def __init__(self, root: Path, run_id: str, *, rank: int, world_size: int) -> None:
        self.root = Path(root)
        self._run_file = self.root / RUN_FILE
        self._journal_file = self.root / JOURNAL_FILE
        self._data: dict[str, Any] = {
            "run_id": run_id,
            "status": "running",
            "state": None,
            "started_at": _utc_now(),
            "ended_at": None,
            "rank": rank,
            "world_size": world_size,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "error": None,
            "phases": {},
            "elapsed_s": None,
            "argv": list(sys.argv),
            "cwd": os.getcwd(),
            "entry_point": None,
            "python": sys.version.split()[0],
            "package_version": _package_version(),
            "root": str(self.root),
        }

    @property
    def data(self) -> dict[str, Any]:
        """What ``run.json`` holds now (a copy)."""
        return dict(self._data)

    def start(self, started_at: datetime | None = None) -> None:
        """Write the first ``run.json``, status ``running``."""
        if started_at is not None:
            self._data["started_at"] = started_at.isoformat()
        self._write()

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` into ``run.json`` and rewrite it atomically."""
        self._data.update(fields)
        self._write()

    def append(self, record: TransitionRecord) -> None:
        """Append one transition to ``lifecycle.jsonl``; keep per-step durations."""
        line = dict(record.to_json(), pid=os.getpid())
        with open(self._journal_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, sort_keys=True) + "\n")
        self._data["state"] = record.dest.value if record.ok else record.source.value
        if record.ok:
            phases: dict[str, float] = self._data["phases"]
            phases[record.step] = round(phases.get(record.step, 0.0) + record.duration_s, 6)

    def finish(
        self,
        status: str,
        *,
        state: str,
        error: Mapping[str, str] | None,
        elapsed_s: float | None = None,
    ) -> None:
        """Record the final status (``completed``, ``failed`` or ``interrupted``) and the
        run's wall time as the time tracker measured it."""
        if status not in STATUSES[1:]:
            raise ValueError(f"final status must be one of {STATUSES[1:]}, got {status!r}")
        self.update(
            status=status,
            state=state,
            ended_at=_utc_now(),
            error=dict(error) if error else None,
            elapsed_s=elapsed_s,
        )

    def _write(self) -> None:
        atomic_write_json(self._run_file, self._data)


def _package_version() -> str:
    from orchestrator_fsm import __version__

    return __version__


def read_run_file(root: Path) -> dict[str, Any]:
    """Load ``run.json`` from a run directory (``FileNotFoundError`` when absent)."""
    with open(Path(root) / RUN_FILE, encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def read_transitions(root: Path) -> list[dict[str, Any]]:
    """Load every complete line of ``lifecycle.jsonl`` (an empty list when absent).

    A torn last line (the writer died mid-append) is skipped, not fatal.
    """
    path = Path(root) / JOURNAL_FILE
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def pid_is_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def effective_status(run: Mapping[str, Any]) -> str:
    """The status to show for ``run``: ``crashed`` for a running run whose process is gone.

    Only a run started on this host can be judged; elsewhere ``running`` stays.
    """
    status = str(run.get("status", "unknown"))
    if status != "running" or run.get("host") != socket.gethostname():
        return status
    pid = run.get("pid")
    if isinstance(pid, int) and not pid_is_alive(pid):
        return "crashed"
    return status
