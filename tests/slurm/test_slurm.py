"""Runs under a real SLURM (tests/slurm/cluster.sh: slurmctld and two emulated nodes, n1
and n2, on this host): real sbatch jobs, srun steps, signals, requeues and preemptions,
checked against the run record and ``scontrol show job``."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import run_dirs
from slurm_helpers import (
    ENTRIES,
    REPO,
    array_infos,
    entry,
    job_env,
    job_info,
    job_output,
    marks,
    sbatch,
    slurm_cluster,
    slurm_dir,
    slurm_recipe,
    wait_job,
    wait_until,
)

pytestmark = pytest.mark.slow

__all__ = ["slurm_cluster", "slurm_dir"]  # the fixtures, used by name

RUN = "orchestrator-fsm run"


def run_json(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    return data


def only_run(directory: Path) -> Path:
    dirs = run_dirs(directory / "outputs")
    assert len(dirs) == 1, f"expected one run directory, found {dirs}"
    return dirs[0]


def scancel(*argv: str) -> None:
    subprocess.run(["scancel", *argv], timeout=30, check=True, capture_output=True)


def readme_job_script(marker: str) -> str:
    """The README's bash block that holds ``#SBATCH`` and ``marker``: the tests run the
    job scripts the README shows."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "#SBATCH" in b]
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"expected one README job script with {marker!r}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module", autouse=True)
def time_limit_job(
    slurm_cluster: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A job that runs into its time limit, submitted before the other tests so that its
    minute (SLURM's shortest limit) passes while they run; ``high`` partition on n1, so
    that the preemption test (on n2) leaves it alone. Its id and folder."""
    directory = tmp_path_factory.mktemp("time_limit")
    recipe = slurm_recipe(directory)
    job = sbatch(
        f"#!/bin/bash\nsrun {RUN} {recipe} --entry {entry('sleepy')}\n",
        *("--time=1", "-p", "high", "-w", "n1", "-n", "1"),
        cwd=directory,
        env=job_env(directory, MARK_DIR=str(directory)),
    )
    yield job, directory
    subprocess.run(["scancel", job], timeout=30, check=False, capture_output=True)


def test_two_tasks_under_srun_train_ddp_with_gloo_in_one_run_directory(
    slurm_dir: Path,
) -> None:
    recipe = slurm_recipe(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    job = sbatch(
        f"#!/bin/bash\nsrun {RUN} {recipe} --entry {entry('ddp')}\n",
        "-N",
        "2",
        "--ntasks-per-node=1",
        cwd=slurm_dir,
        env=env,
    )
    info = wait_job(job)
    assert info["JobState"] == "COMPLETED", job_output(slurm_dir)
    # Both ranks summed 1 + 2 over gloo, MASTER_ADDR/PORT derived from the node list.
    assert [(slurm_dir / f"ddp-rank{r}").read_text() for r in (0, 1)] == ["3", "3"]
    run_dir = only_run(slurm_dir)
    record = run_json(run_dir)
    assert record["status"] == "completed"
    assert (run_dir / "ranks" / "rank1.json").exists()
    assert (run_dir / "logs" / "rank1.log").exists()
    assert json.loads((run_dir / "ranks" / "rank1.json").read_text())["status"] == "completed"


def test_a_usr1_while_the_command_starts_reaches_the_callback_once_live(
    slurm_dir: Path,
) -> None:
    """SIGUSR1 sent as soon as the step runs (the command still importing torch and the
    entry) used to end the task: no run directory, no record. Now it is held and the
    callback gets it once the run is live."""
    recipe = slurm_recipe(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    job = sbatch(
        # entries.py beside it on the entry's path: slow_entry imports entries.
        f"#!/bin/bash\nsrun -n 2 {RUN} {recipe} --entry {ENTRIES.parent / 'slow_entry.py'}:main\n",
        "-n",
        "2",
        cwd=slurm_dir,
        env=env,
    )

    # Once both tasks' command has run its first line (SIGUSR1 caught), well before the
    # run is live: importing torch and the entry (3 s, slow_entry.py) takes seconds.
    wait_until("both tasks to hold SIGUSR1", lambda: len(holding_usr1(slurm_dir)) == 2, 90)
    scancel("--signal=USR1", job)
    info = wait_job(job)
    assert info["JobState"] == "COMPLETED", job_output(slurm_dir)
    assert marks(slurm_dir, "usr1-") == ["usr1-rank0-attempt1", "usr1-rank1-attempt1"]
    run_dir = only_run(slurm_dir)
    assert run_json(run_dir)["status"] == "completed"
    for log in ("run.log", "rank1.log"):
        text = (run_dir / "logs" / log).read_text(encoding="utf-8")
        assert "received SIGUSR1 while the run was starting; delivering it now" in text


def holding_usr1(marker_dir: Path) -> list[int]:
    """The pids of the ``orchestrator-fsm`` commands of jobs whose ``MARK_DIR`` is
    ``marker_dir`` that catch SIGUSR1 (``SigCgt`` in ``/proc/PID/status``)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if not (argv[0].rsplit(b"/", 1)[-1].startswith(b"python") and len(argv) > 1):
                continue
            if not argv[1].endswith(b"/orchestrator-fsm"):
                continue
            if f"MARK_DIR={marker_dir}".encode() not in (proc / "environ").read_bytes():
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
        if caught & (1 << (signal.SIGUSR1 - 1)):
            found.append(int(proc.name))
    return found


def test_array_tasks_of_one_config_are_separate_runs_none_refused(slurm_dir: Path) -> None:
    """Same config, default run lock: the lock identity holds the array task, so the
    tasks (here on one node, concurrently) no longer refuse each other."""
    recipe = slurm_recipe(slurm_dir, lock_path=False)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    job = sbatch(
        f"#!/bin/bash\n{RUN} {recipe} --entry {entry('linger')}\n",
        "--array=0-2",
        "--ntasks=1",
        cwd=slurm_dir,
        env=env,
    )
    wait_until(
        f"array {job} to end",
        lambda: (
            all(i.get("JobState") in {"COMPLETED", "FAILED"} for i in array_infos(job))
            and len(array_infos(job)) == 3
        ),
        timeout_s=180,
    )
    states = [i["JobState"] for i in array_infos(job)]
    assert states == ["COMPLETED"] * 3, job_output(slurm_dir)
    dirs = run_dirs(slurm_dir / "outputs")
    assert len(dirs) == 3
    assert {run_json(d)["status"] for d in dirs} == {"completed"}


def test_the_demo_and_ddp_example_train_under_srun_n_2(slurm_dir: Path) -> None:
    """Without torchrun nothing sets MASTER_ADDR/MASTER_PORT: the demo and
    examples/ddp_train.py derive them from SLURM's node list and job id."""
    demo = [
        f"telemetry.output_dir={slurm_dir / 'demo'}",
        "training.epochs=1",
        "dataset.num_samples=64",
    ]
    example = [
        f"telemetry.output_dir={slurm_dir / 'example'}",
        f"infrastructure.lock.path={slurm_dir / 'x.lock'}",
        "hardware.num_workers=0",
        "training.epochs=1",
        "dataset.num_samples=64",
    ]
    sets = {name: " ".join(f"--set {o}" for o in o_) for name, o_ in (("d", demo), ("e", example))}
    recipe = REPO / "examples" / "recipes" / "mini_cnn.yaml"
    script = (
        "#!/bin/bash\nset -e\n"
        f"srun -n 2 {RUN} {sets['d']}\n"
        f"srun -n 2 python {REPO / 'examples' / 'ddp_train.py'} {recipe} {sets['e']}\n"
    )
    job = sbatch(script, "-n", "2", cwd=slurm_dir, env=job_env(slurm_dir))
    info = wait_job(job, timeout_s=240)
    assert info["JobState"] == "COMPLETED", job_output(slurm_dir)
    for folder in ("demo", "example"):
        (run_dir,) = run_dirs(slurm_dir / folder)
        assert run_json(run_dir)["status"] == "completed"
        assert (run_dir / "ranks" / "rank1.json").exists()
    assert "2 ranks; final training accuracy" in job_output(slurm_dir)


def test_scontrol_requeue_reopens_the_run_as_attempt_2(slurm_dir: Path) -> None:
    recipe = slurm_recipe(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    job = sbatch(
        f"#!/bin/bash\nsrun {RUN} {recipe} --entry {entry('sleepy')}\n",
        "-n",
        "1",
        cwd=slurm_dir,
        env=env,
    )
    wait_until("attempt 1 to be live", lambda: marks(slurm_dir, "live-rank0-attempt1"), 120)
    subprocess.run(["scontrol", "requeue", job], timeout=30, check=True, capture_output=True)
    requeued_then_released(job)
    (slurm_dir / "stop").touch()
    info = wait_job(job)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), job_output(slurm_dir)
    attempts = run_json(only_run(slurm_dir))["attempts"]
    assert [a["number"] for a in attempts] == [1, 2]
    assert attempts[0]["status"] != "completed"
    assert attempts[1]["status"] == "completed"


def requeued_then_released(job: str) -> None:
    """Wait until ``job`` is pending again after a requeue, then let it start now:
    SLURM holds a requeued job back for two minutes (``Reason=BeginTime``)."""

    def released() -> bool:
        info = job_info(job)
        if info.get("Restarts") != "1" or info.get("JobState") != "PENDING":
            return False
        update = subprocess.run(
            ["scontrol", "update", f"JobId={job}", "StartTime=now"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return update.returncode == 0

    wait_until(f"job {job} to be requeued", released, timeout_s=90)


def test_usr1_reaches_every_rank_then_scancel_interrupts_the_run(slurm_dir: Path) -> None:
    recipe = slurm_recipe(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    job = sbatch(
        f"#!/bin/bash\nsrun -n 2 {RUN} {recipe} --entry {entry('sleepy')}\n",
        "-n",
        "2",
        cwd=slurm_dir,
        env=env,
    )
    wait_until("both ranks to be live", lambda: len(marks(slurm_dir, "live-")) == 2, 120)
    scancel("--signal=USR1", job)
    wait_until("both callbacks", lambda: len(marks(slurm_dir, "usr1-")) == 2, 60)
    assert marks(slurm_dir, "usr1-") == ["usr1-rank0-attempt1", "usr1-rank1-attempt1"]
    scancel(job)
    info = wait_job(job)
    assert info["JobState"] == "CANCELLED"
    run_dir = only_run(slurm_dir)
    wait_until("the record to be final", lambda: run_json(run_dir)["status"] != "running", 30)
    assert run_json(run_dir)["status"] == "interrupted"


def test_a_failing_task_fails_the_job_and_names_its_rank(slurm_dir: Path) -> None:
    recipe = slurm_recipe(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    job = sbatch(
        f"#!/bin/bash\nsrun -n 2 {RUN} {recipe} --entry {entry('fail_on_rank1')}\n",
        "-n",
        "2",
        cwd=slurm_dir,
        env=env,
    )
    info = wait_job(job, timeout_s=120)  # no hang: bounded well below join_timeout_s
    assert info["JobState"] == "FAILED"
    record = run_json(only_run(slurm_dir))
    assert (record["status"], record["failed_rank"]) == ("failed", 1)
    assert "rank 1 fails on purpose" in json.dumps(record["error"])


def test_a_preemption_requeues_the_readme_job_as_attempt_2(slurm_dir: Path) -> None:
    """The README's job script, preempted by a job of the higher-priority partition
    (PreemptMode=REQUEUE, GraceTime=5): requeued, the run reopened as attempt 2."""
    slurm_recipe(slurm_dir)  # recipe.yaml, as the README's script names it
    train_py(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    script = readme_job_script("PreemptTime")
    job = sbatch(script, "-p", "low", "-w", "n2", "-n", "1", "-c", "2", cwd=slurm_dir, env=env)
    wait_until("attempt 1 to be live", lambda: marks(slurm_dir, "live-rank0-attempt1"), 120)
    high = sbatch(
        "#!/bin/bash\nsleep 1\n",
        "-p",
        "high",
        "-w",
        "n2",
        "-c",
        "2",
        cwd=slurm_dir,
        env=env,
        name="high",
    )
    requeued_then_released(job)
    (slurm_dir / "stop").touch()
    info = wait_job(job, timeout_s=180)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), job_output(slurm_dir)
    assert wait_job(high)["JobState"] == "COMPLETED"
    attempts = run_json(only_run(slurm_dir))["attempts"]
    assert [a["number"] for a in attempts] == [1, 2]
    assert [a["status"] == "completed" for a in attempts] == [False, True]


def train_py(directory: Path) -> None:
    """``train.py`` with ``main``, as the README's job scripts name the entry:
    :func:`entries.sleepy`."""
    (directory / "train.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO / 'tests' / 'slurm')!r})\n"
        "from entries import sleepy as main\n",
        encoding="utf-8",
    )


def test_srun_torchrun_on_two_nodes_survives_usr1_the_readme_way(slurm_dir: Path) -> None:
    """The README's torchrun job script on the two emulated nodes: SIGUSR1 reaches the
    callback on both ranks and torchrun's agents live on (they used to die of it, leaving
    their workers orphaned and the job FAILED)."""
    slurm_recipe(slurm_dir)
    train_py(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir), NPROC_PER_NODE="1")
    job = sbatch(readme_job_script("torchrun"), cwd=slurm_dir, env=env)
    wait_until("both ranks to be live", lambda: len(marks(slurm_dir, "live-")) == 2, 150)
    scancel("--signal=USR1", job)
    wait_until("both callbacks", lambda: len(marks(slurm_dir, "usr1-")) == 2, 60)
    (slurm_dir / "stop").touch()
    info = wait_job(job, timeout_s=120)
    output = job_output(slurm_dir)
    assert info["JobState"] == "COMPLETED", output
    assert "User defined signal" not in output
    run_dir = only_run(slurm_dir)
    assert run_json(run_dir)["status"] == "completed"
    assert json.loads((run_dir / "ranks" / "rank1.json").read_text())["status"] == "completed"
    assert info["NodeList"] == "n[1-2]"


def test_the_time_limit_ends_the_run_and_slurm_says_timeout(
    time_limit_job: tuple[str, Path],
) -> None:
    """Last in this file: the job submitted first has had its minute by now."""
    job, directory = time_limit_job
    info = wait_job(job, timeout_s=150)
    assert info["JobState"] == "TIMEOUT", job_output(directory)
    assert marks(directory, "live-") == ["live-rank0-attempt1"]
    run_dir = only_run(directory)
    wait_until("the record to be final", lambda: run_json(run_dir)["status"] != "running", 30)
    # Stopped by SLURM's SIGTERM, never completed (how it is named is the record's).
    assert run_json(run_dir)["status"] not in {"running", "completed"}
