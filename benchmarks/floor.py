"""The floor: a round trip's system calls made by minimal hand-written code.

``floor_round_trip`` does what ``with RootOrchestrator(cfg) as o:
o.log_environment_report()`` does on disk and in the process, without the engine:
the same directories, the same files written the same way (temporary file, fsync,
rename), the same number of ``run.json`` rewrites and ``lifecycle.jsonl`` appends, an
``flock`` with the holder written and fsynced, the seeding calls, the thread setting,
the distribution listing, the one ``git`` probe the manifest makes outside a checkout
(in a checkout: the probe, ``status``, ``remote -v`` and ``diff HEAD``, one after
another, with ``git_info.txt`` and ``git_diff.patch`` written), strict determinism's
flags and variables when the recipe is ``reproducible`` (set and put back), and the
report written to the log file and to the console (stderr). It is what "no framework
at all" costs, so ``ours / floor`` is the price of the framework.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import yaml

from orchestrator_fsm._system import available_cpu_count

__all__ = ["FloorRun", "floor_round_trip"]

_SUBDIRECTORIES: Final = ("logs", "reports", "checkpoints", "figures", "exports", "database")
_TRANSITIONS_PER_RUN: Final = 9  # created -> seeded -> ... -> reported -> cleaned


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _append_transition(path: Path, number: int) -> None:
    line = {"step": number, "at": time.time(), "ok": True, "pid": os.getpid()}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


class FloorRun:
    """The inputs of a floor round trip: where it writes and what it records."""

    def __init__(self, config: dict[str, Any], output_dir: Path, lock_path: Path) -> None:
        self.config = config
        self.seed = int(config["training"]["seed"])
        self.strict = bool(config.get("hardware", {}).get("reproducible", False))
        self.output_dir = output_dir
        self.lock_path = lock_path
        self.cache_dir = Path(os.environ["XDG_CACHE_HOME"]) / "orchestrator-fsm"
        # Resolved once, as the manifest step resolves it (one exec, not one per PATH entry).
        self.git = shutil.which("git") or "git"


_STRICT_ENV: Final = ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "TORCHINDUCTOR_DETERMINISTIC")


def _strict_on(seed: int) -> None:
    # What strict seeding sets, by the shortest calls that set it.
    os.environ.update(
        CUBLAS_WORKSPACE_CONFIG=":4096:8", PYTHONHASHSEED=str(seed), TORCHINDUCTOR_DETERMINISTIC="1"
    )
    torch._C._set_deterministic_algorithms(True, warn_only=False)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _strict_off() -> None:
    for name in _STRICT_ENV:
        os.environ.pop(name, None)
    torch._C._set_deterministic_algorithms(False, warn_only=False)


def _git(run: FloorRun, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([run.git, *args], capture_output=True, check=False)


def _git_state(run: FloorRun, reports: Path) -> None:
    """The probe, and in a checkout its state, remotes and diff, one git after another."""
    if _git(run, "rev-parse", "--show-toplevel").returncode != 0:
        return
    status = _git(run, "status", "--porcelain=v2", "--branch", "--untracked-files=normal")
    remotes = _git(run, "remote", "-v")
    diff = _git(run, "diff", "HEAD", "--no-color", "--no-ext-diff")
    _write_atomic(reports / "git_diff.patch", diff.stdout)
    _write_atomic(reports / "git_info.txt", status.stdout + remotes.stdout)


def floor_round_trip(run: FloorRun) -> None:
    """One hand-written round trip; see the module docstring for what it covers."""
    random.seed(run.seed)
    np.random.seed(run.seed)
    torch.manual_seed(run.seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if run.strict:
        _strict_on(run.seed)
    threads = available_cpu_count()
    torch.set_num_threads(threads)

    run.cache_dir.mkdir(parents=True, exist_ok=True)
    (run.cache_dir / "locks").mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = run.output_dir / f"{stamp}-floor-{secrets.token_hex(2)}"
    run.output_dir.mkdir(parents=True, exist_ok=True)
    os.mkdir(root)
    for name in _SUBDIRECTORIES:
        os.mkdir(root / name)
    journal = root / "lifecycle.jsonl"
    status: dict[str, Any] = {"run_id": root.name, "status": "running", "pid": os.getpid()}
    run_file = root / "run.json"
    _write_atomic(run_file, json.dumps(status).encode())
    for number in range(3):  # seed, configure, provision: journaled once the dir exists
        _append_transition(journal, number)

    log = open(root / "logs" / "run.log", "a", encoding="utf-8")  # noqa: SIM115
    _append_transition(journal, 3)

    reports = root / "reports"
    _write_atomic(reports / "config.yaml", yaml.safe_dump(run.config).encode())
    requirements = []
    for dist in metadata.distributions():
        fields = dist.metadata
        requirements.append(f"{fields['Name']}=={fields['Version']}")
    _write_atomic(reports / "requirements.txt", "\n".join(sorted(requirements)).encode())
    _git_state(run, reports)
    status["argv"] = sys.argv
    _write_atomic(run_file, json.dumps(status).encode())
    _append_transition(journal, 4)

    run.lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(run.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(lock, 0)
    os.pwrite(lock, json.dumps({"pid": os.getpid(), "run_id": root.name}).encode(), 0)
    os.fsync(lock)
    _append_transition(journal, 5)

    device = torch.device("cpu")
    status["device"] = str(device)
    _write_atomic(run_file, json.dumps(status).encode())
    _append_transition(journal, 6)

    report = {
        "run_id": root.name,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.is_available(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cpu_count": os.cpu_count(),
    }
    _write_atomic(reports / "environment.json", json.dumps(report, indent=2).encode())
    text = "".join(f"{key}: {value}\n" for key, value in report.items())
    log.write(text)
    sys.stderr.write(text)
    _append_transition(journal, 7)

    os.ftruncate(lock, 0)
    fcntl.flock(lock, fcntl.LOCK_UN)
    os.close(lock)
    log.close()
    if run.strict:
        _strict_off()
    status["status"] = "completed"
    _write_atomic(run_file, json.dumps(status).encode())
    for number in range(8, _TRANSITIONS_PER_RUN):
        _append_transition(journal, number)
