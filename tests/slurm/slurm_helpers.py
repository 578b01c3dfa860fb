"""Helpers of the real-SLURM tests: the cluster of ``cluster.sh``, ``sbatch`` and waits.

The cluster (munge, slurmctld, ``slurmd -N n1`` and ``slurmd -N n2`` on this host) is
started by ``make test`` (its ``slurm`` target) or here, on first use; where it cannot
run (not root, no apt-get) every test that asks for ``slurm_cluster`` is skipped with
the reason ``cluster.sh`` gave. Jobs run this checkout's ``orchestrator-fsm``: the
console command beside ``sys.executable``, with the repository first on ``PYTHONPATH``.
Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = Path(__file__).with_name("cluster.sh")
BIN = Path(sys.executable).parent

#: The states a job ends in (a requeued job goes back to PENDING instead).
TERMINAL = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "PREEMPTED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
    }
)


def _run(*argv: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The cluster's one-line state; skips the test (with the reason) when it is not up."""
    if shutil.which("bash") is None:
        pytest.skip("no bash to run tests/slurm/cluster.sh")
    status = _run("bash", str(CLUSTER), "status")
    if status.returncode != 0:
        started = _run("bash", str(CLUSTER), "start", timeout_s=900)
        status = _run("bash", str(CLUSTER), "status")
        if status.returncode != 0:
            pytest.skip(started.stdout.strip() or status.stdout.strip())
    return status.stdout.strip()


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment a job is submitted with (sbatch passes it on): this checkout's
    package and console command first, one thread per process, the run lock's default
    folder inside ``tmp_path``, no launcher variables of an enclosing job."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_"))
        and k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK"}
        and k not in {"MASTER_ADDR", "MASTER_PORT", "PYTEST_CURRENT_TEST"}
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["ORCHESTRATOR_FSM_RANKS_GRACE_S"] = "15"
    env.update(extra)
    return env


def sbatch(script: str, *options: str, cwd: Path, env: dict[str, str], name: str = "job") -> str:
    """Submit ``script`` (its text) from ``cwd`` with ``options``; its job id. Output goes
    to ``cwd/<name>-<job id>.out``."""
    path = cwd / f"{name}.sh"
    path.write_text(script, encoding="utf-8")
    result = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "-D",
            str(cwd),
            "-o",
            str(cwd / f"{name}-%j.out"),
            *options,
            str(path),
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"sbatch failed: {result.stderr}"
    return result.stdout.strip().split(";")[0]


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job JOB_ID`` as a dict (``JobState``, ``Reason``, ``Restarts``,
    ``ExitCode``...); for an array job id, its first task's."""
    result = _run("scontrol", "-o", "show", "job", job_id)
    assert result.returncode == 0, f"scontrol show job {job_id}: {result.stderr}"
    line = result.stdout.splitlines()[0]
    return dict(re.findall(r"(\S+?)=(\S*)", line))


def array_infos(job_id: str) -> list[dict[str, str]]:
    """``scontrol show job`` of every task of the array ``job_id``."""
    result = _run("scontrol", "-o", "show", "job", job_id)
    assert result.returncode == 0, f"scontrol show job {job_id}: {result.stderr}"
    return [dict(re.findall(r"(\S+?)=(\S*)", line)) for line in result.stdout.splitlines()]


def wait_until(what: str, found: Callable[[], object], timeout_s: float = 120) -> object:
    """``found()`` once it is truthy; fails naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"waited {timeout_s:g}s for {what}")


def wait_job(job_id: str, timeout_s: float = 180) -> dict[str, str]:
    """``scontrol show job`` of ``job_id`` once it has ended (a terminal state)."""
    info: dict[str, str] = {}

    def ended() -> bool:
        info.update(job_info(job_id))
        return info.get("JobState") in TERMINAL

    wait_until(f"job {job_id} to end (last seen {info.get('JobState')})", ended, timeout_s)
    return info


def job_output(cwd: Path, name: str = "job") -> str:
    """What the jobs named ``name`` wrote to their output files in ``cwd``."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(cwd.glob(f"{name}-*.out")))


@pytest.fixture
def slurm_dir(tmp_path: Path, slurm_cluster: str) -> Iterator[Path]:
    """A folder for one test's jobs; its jobs still queued or running are cancelled
    after the test."""
    yield tmp_path
    result = _run("squeue", "-h", "-o", "%i %Z")
    for line in result.stdout.splitlines():
        job, _, workdir = line.partition(" ")
        if workdir.startswith(str(tmp_path)):
            _run("scancel", job.split("_")[0])


ENTRIES = Path(__file__).with_name("entries.py")


def entry(name: str) -> str:
    """The ``--entry`` of the function ``name`` of ``entries.py``."""
    return f"{ENTRIES}:{name}"


def slurm_recipe(directory: Path, *, lock_path: bool = True, **sections: Any) -> Path:
    """A minimal recipe in ``directory`` whose SIGUSR1 callback is ``entries.save``;
    ``lock_path=False`` leaves the run lock at its default (per run identity)."""
    from conftest import minimal_recipe, write_recipe

    recipe = minimal_recipe(directory, **sections)
    if not lock_path:
        del recipe["infrastructure"]["lock"]
    recipe["infrastructure"]["signal_callbacks"] = {"SIGUSR1": entry("save")}
    return write_recipe(directory, recipe)


def marks(directory: Path, prefix: str) -> list[str]:
    """The marker files ``entries.py`` left in ``directory`` whose names start with
    ``prefix``, sorted."""
    return sorted(p.name for p in directory.glob(f"{prefix}*"))
