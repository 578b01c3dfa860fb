"""The one fixture module of the real-SLURM tests: the cluster of ``cluster.sh``,
``sbatch``, ``scontrol``, the run record and bounded waits.

The cluster (munge, slurmctld, ``slurmd -N n1`` and ``slurmd -N n2`` on this host) is
started by ``make test`` (its ``slurm`` target) or here, on first use; where it cannot
run (not root, no apt-get) every test that asks for ``slurm_cluster`` is skipped with
the reason ``cluster.sh`` gave. Jobs run this checkout's ``orchestrator-fsm``: the
console command beside ``sys.executable``, with the repository first on ``PYTHONPATH``.
Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


def wait_until(
    what: str, found: Callable[[], object], timeout_s: float = 120, poll_s: float = 0.2
) -> object:
    """``found()`` once it is truthy (asked every ``poll_s``); fails naming ``what``
    after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"waited {timeout_s:g}s for {what}")


def wait_job(job_id: str, timeout_s: float = 180, poll_s: float = 0.2) -> dict[str, str]:
    """``scontrol show job`` of ``job_id`` once it has ended (a terminal state)."""
    info: dict[str, str] = {}

    def ended() -> bool:
        info.update(job_info(job_id))
        return info.get("JobState") in TERMINAL

    wait_until(f"job {job_id} to end (last seen {info.get('JobState')})", ended, timeout_s, poll_s)
    return info


def watch_job(job_id: str, timeout_s: float = 240) -> Future[dict[str, str]]:
    """:func:`wait_job` in a thread of its own, asking every second: the job's last
    ``scontrol show job`` even when the test that reads it runs after SLURM forgot the
    job (``MinJobAge``). A failed wait is raised by the future's ``result()``."""
    pool = ThreadPoolExecutor(1, thread_name_prefix=f"watch-{job_id}")
    future = pool.submit(wait_job, job_id, timeout_s, 1.0)
    pool.shutdown(wait=False)
    return future


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


def scancel(*argv: str, check: bool = True) -> None:
    """``scancel ARGV``; fails the test when scancel does, unless ``check`` is false
    (a clean-up: the job may have ended, and SLURM forgotten it, long ago)."""
    result = _run("scancel", *argv)
    assert result.returncode == 0 or not check, f"scancel {' '.join(argv)}: {result.stderr}"


def scontrol(*argv: str) -> None:
    """``scontrol ARGV`` (``requeue JOB``...); fails the test when scontrol does."""
    result = _run("scontrol", *argv)
    assert result.returncode == 0, f"scontrol {' '.join(argv)}: {result.stderr}"


def run_json(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of ``run_dir``, as written."""
    data: dict[str, Any] = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    return data


def rank_json(run_dir: Path, rank: int) -> dict[str, Any]:
    """``ranks/rank<N>.json`` of ``run_dir``, as written."""
    text = (run_dir / "ranks" / f"rank{rank}.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def only_run(directory: Path) -> Path:
    """The one run directory in ``directory/outputs`` (the recipes' output folder)."""
    from conftest import only_run_dir

    return only_run_dir(directory / "outputs")


def final_record(run_dir: Path, timeout_s: float = 30) -> Any:
    """``read_run(run_dir)`` once its status is no longer ``running`` (rank 0 writes it
    as its process ends, which may come after SLURM shows the job ended)."""
    from orchestrator_fsm import read_run

    wait_until(
        f"{run_dir.name}'s record to be final",
        lambda: read_run(run_dir).status != "running",
        timeout_s,
    )
    return read_run(run_dir)


def first_attempt_closed(run_dir: Path, timeout_s: float = 30) -> Any:
    """Attempt 1 of ``run_dir`` once it is written as ended."""
    from orchestrator_fsm import read_run

    def closed() -> object:
        attempts = read_run(run_dir).attempts
        return attempts and attempts[0].status != "running" and attempts[0]

    return wait_until(f"attempt 1 of {run_dir.name} to be written", closed, timeout_s)


def requeued_then_released(job: str, timeout_s: float = 90) -> None:
    """Wait until ``job`` is pending again after a requeue or a preemption, then let it
    start now: SLURM holds a requeued job back for its credentials' lifetime
    (``AuthInfo=cred_expire``, 120 s by default; ``Reason=BeginTime``)."""

    def released() -> bool:
        info = job_info(job)
        if info.get("Restarts") != "1" or info.get("JobState") != "PENDING":
            return False
        return _run("scontrol", "update", f"JobId={job}", "StartTime=now").returncode == 0

    wait_until(f"job {job} to be requeued", released, timeout_s)


def marks(directory: Path, prefix: str) -> list[str]:
    """The marker files ``entries.py`` left in ``directory`` whose names start with
    ``prefix``, sorted."""
    return sorted(p.name for p in directory.glob(f"{prefix}*"))


def readme_job_script(marker: str) -> str:
    """The README's bash block that holds ``#SBATCH`` and ``marker``: the tests run the
    job scripts the README shows."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "#SBATCH" in b]
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"expected one README job script with {marker!r}, found {len(found)}"
    return found[0]
