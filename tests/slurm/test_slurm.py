"""Runs under a real SLURM (tests/slurm/cluster.sh: slurmctld and two emulated nodes, n1
and n2, on this host): real sbatch jobs, srun steps, signals, requeues and preemptions,
checked against the run record, ``runs``, ``inspect`` and ``scontrol show job``.

Each scenario is one job. The time-limit job is submitted first (SLURM's shortest limit
is a minute) and collected by the last test, so that its minute passes while the others
run; a requeued job is released at once instead of waiting SLURM's two minutes.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, run_dirs
from slurm_helpers import (
    ENTRIES,
    REPO,
    array_infos,
    entry,
    final_record,
    first_attempt_closed,
    job_env,
    job_output,
    marks,
    only_run,
    rank_json,
    readme_job_script,
    requeued_then_released,
    run_json,
    sbatch,
    scancel,
    scontrol,
    slurm_cluster,
    slurm_dir,
    slurm_recipe,
    wait_job,
    wait_until,
    watch_job,
)

pytestmark = pytest.mark.slow

__all__ = ["slurm_cluster", "slurm_dir"]  # the fixtures, used by name

RUN = "orchestrator-fsm run"
SLOW_ENTRY = ENTRIES.parent / "slow_entry.py"


def train_py(directory: Path) -> None:
    """``train.py`` with ``main``, as the README's job scripts name the entry:
    :func:`entries.sleepy`."""
    (directory / "train.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO / 'tests' / 'slurm')!r})\n"
        "from entries import sleepy as main\n",
        encoding="utf-8",
    )


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


@pytest.fixture(scope="module", autouse=True)
def time_limit_job(
    slurm_cluster: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Future[dict[str, str]], Path]]:
    """A job that runs into its time limit, submitted before the other tests so that its
    minute (SLURM's shortest limit) passes while they run; ``high`` partition on n1, so
    that the preemption test (on n2) leaves it alone. The batch script is the run
    (``exec``, no srun step), the README's other way. Its watch (:func:`watch_job`) and
    folder."""
    directory = tmp_path_factory.mktemp("time_limit")
    recipe = slurm_recipe(directory)
    job = sbatch(
        f"#!/bin/bash\nexec {RUN} {recipe} --entry {entry('sleepy')}\n",
        *("--time=1", "-p", "high", "-w", "n1", "-n", "1"),
        cwd=directory,
        env=job_env(directory, MARK_DIR=str(directory)),
    )
    watch = watch_job(job)
    yield watch, directory
    scancel(job, check=False)


def test_two_tasks_under_srun_train_ddp_with_gloo_in_one_run_directory(
    slurm_dir: Path,
) -> None:
    recipe = slurm_recipe(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    job = sbatch(
        f"#!/bin/bash\nsrun {RUN} {recipe} --entry {entry('ddp')}\n",
        *("-N", "2", "--ntasks-per-node=1"),
        cwd=slurm_dir,
        env=env,
    )
    info = wait_job(job)
    assert info["JobState"] == "COMPLETED", job_output(slurm_dir)
    # Both ranks summed 1 + 2 over gloo, MASTER_ADDR/PORT derived from the node list.
    assert [(slurm_dir / f"ddp-rank{r}").read_text() for r in (0, 1)] == ["3", "3"]
    run_dir = only_run(slurm_dir)
    assert run_json(run_dir)["status"] == "completed"
    assert (run_dir / "logs" / "rank1.log").exists()
    assert rank_json(run_dir, 1)["status"] == "completed"


def test_usr1_reaches_every_rank_even_while_starting_then_scancel_is_cancelled(
    slurm_dir: Path,
) -> None:
    """Two srun tasks. SIGUSR1 sent while both commands are still starting (importing
    torch and a 3 s entry) used to end the task: no run directory, no record; now it is
    held and every rank's callback gets it once the run is live. Then ``scancel``: the
    job-wide SIGTERM is the job's (``cancelled``, no rank blamed, SLURM's words as the
    evidence), and the raw job id is in run.json, ``runs`` and ``inspect``."""
    recipe = slurm_recipe(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    job = sbatch(
        # entries.py beside it on the entry's path: slow_entry imports entries.
        f"#!/bin/bash\nsrun -n 2 {RUN} {recipe} --entry {SLOW_ENTRY}:sleepy\n",
        *("-n", "2"),
        cwd=slurm_dir,
        env=env,
    )
    # Once both tasks' command has run its first line (SIGUSR1 caught), well before the
    # run is live: importing torch and the entry (3 s, slow_entry.py) takes seconds. The
    # bound includes the time the job may first wait for CPUs that the module's time-limit
    # job and the jobs of the tests before it still hold.
    wait_until("both tasks to hold SIGUSR1", lambda: len(holding_usr1(slurm_dir)) == 2, 240)
    assert not marks(slurm_dir, "live-"), "the runs were live already: nothing was held"
    scancel("--signal=USR1", job)
    wait_until("both callbacks", lambda: len(marks(slurm_dir, "usr1-")) == 2, 90)
    assert marks(slurm_dir, "usr1-") == ["usr1-rank0-attempt1", "usr1-rank1-attempt1"]
    wait_until("both ranks to be live", lambda: len(marks(slurm_dir, "live-")) == 2, 60)
    scancel(job)
    info = wait_job(job)
    output = job_output(slurm_dir)
    assert info["JobState"] == "CANCELLED", output

    run_dir = only_run(slurm_dir)
    record = final_record(run_dir)
    for log in ("run.log", "rank1.log"):
        text = (run_dir / "logs" / log).read_text(encoding="utf-8")
        assert "received SIGUSR1 while the run was starting; delivering it now" in text
    assert (record.status, record.effective_status) == ("cancelled", "cancelled"), output
    assert record.world_size == 2
    assert record.failed_rank is None, record.error
    assert record.interruption is not None and record.interruption.signal == "SIGTERM"
    # slurmstepd's line for the job or its step (scontrol shows COMPLETING meanwhile),
    # or scontrol's CANCELLED; a scancel has no "DUE TO".
    evidence = record.interruption.evidence or ""
    said = (
        rf"SLURM: (JOB {job}|STEP {job}\.\d+) ON n[12] CANCELLED AT \S+"
        r"|SLURM says JobState=CANCELLED .*"
    )
    assert re.fullmatch(said, evidence), evidence
    assert record.attempts[-1].reason == f"SIGTERM; {evidence}"
    assert rank_json(run_dir, 1)["status"] in {"cancelled", "interrupted"}
    # The raw scheduler job id, not only inside a derived key.
    assert record.scheduler is not None and record.scheduler.job_id == job
    assert run_json(run_dir)["scheduler"]["job_id"] == job
    listing = cli("runs", str(slurm_dir / "outputs"), cwd=slurm_dir)
    assert f"slurm {job}" in listing.stdout and "cancelled" in listing.stdout, listing.stdout
    shown = cli("inspect", str(run_dir), cwd=slurm_dir)
    assert f"slurm job {job}" in shown.stdout, shown.stdout
    assert "cancelled" in shown.stdout and "SIGTERM" in shown.stdout


def test_array_tasks_of_one_config_are_separate_runs_named_as_users_name_them(
    slurm_dir: Path,
) -> None:
    """Same config, default run lock: the lock identity holds the array task, so the
    tasks (concurrent, on whichever nodes) no longer refuse each other; each run names
    its task as users do, ``<array job>_<task>``."""
    recipe = slurm_recipe(slurm_dir, lock_path=False)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    job = sbatch(
        f"#!/bin/bash\n{RUN} {recipe} --entry {entry('linger')}\n",
        *("--array=0-2", "--ntasks=1"),
        cwd=slurm_dir,
        env=env,
    )
    wait_until(
        f"array {job} to end",
        lambda: (
            len(infos := array_infos(job)) == 3
            and all(i.get("JobState") in {"COMPLETED", "FAILED"} for i in infos)
        ),
        timeout_s=180,
    )
    assert [i["JobState"] for i in array_infos(job)] == ["COMPLETED"] * 3, job_output(slurm_dir)
    dirs = run_dirs(slurm_dir / "outputs")
    assert len(dirs) == 3
    records = [final_record(d) for d in dirs]
    assert {r.status for r in records} == {"completed"}
    jobs = sorted((r.scheduler for r in records), key=lambda j: j.array_task_id)
    assert [(j.array_job_id, j.array_task_id) for j in jobs] == [(job, t) for t in "012"]
    assert [j.label for j in jobs] == [f"{job}_{t}" for t in "012"]
    assert len({j.job_id for j in jobs}) == 3 and all(j.job_id.isdigit() for j in jobs)
    listing = cli("runs", str(slurm_dir / "outputs"), "--json", cwd=slurm_dir)
    listed = json.loads(listing.stdout)
    assert sorted(r["scheduler"]["array_task_id"] for r in listed) == ["0", "1", "2"]
    assert f"slurm {job}_1" in cli("runs", str(slurm_dir / "outputs"), cwd=slurm_dir).stdout
    task1 = next(r for r in records if r.scheduler.array_task_id == "1")
    shown = cli("inspect", str(task1.root), cwd=slurm_dir)
    assert f"slurm job {job}_1" in shown.stdout, shown.stdout


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


def test_scontrol_requeue_is_preempted_then_attempt_2_in_the_same_run(slurm_dir: Path) -> None:
    """Two srun tasks, ``scontrol requeue``: attempt 1 is ``preempted`` as SLURM says;
    the requeued job reopens the run as attempt 2, on every rank. Attempt 2 then ends
    by ``scancel`` (``cancelled``): attempt 1's reason, once written, is never
    rewritten (it became ``rank 1: preempted`` once attempt 2 started)."""
    recipe = slurm_recipe(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    job = sbatch(
        f"#!/bin/bash\nsrun -n 2 {RUN} {recipe} --entry {entry('sleepy')}\n",
        *("-n", "2", "--requeue"),
        cwd=slurm_dir,
        env=env,
    )
    wait_until("attempt 1 to be live", lambda: len(marks(slurm_dir, "live-")) == 2, 120)
    assert marks(slurm_dir, "live-") == ["live-rank0-attempt1", "live-rank1-attempt1"]
    run_dir = only_run(slurm_dir)
    scontrol("requeue", job)
    first = first_attempt_closed(run_dir)
    assert first.status == "preempted", job_output(slurm_dir)
    assert first.reason is not None and first.reason.startswith("SIGTERM; SLURM says"), first
    requeued_then_released(job)
    wait_until("attempt 2 to be live", lambda: len(marks(slurm_dir, "live-")) == 4, 120)
    scancel(job)
    info = wait_job(job)
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "1"), job_output(slurm_dir)

    assert only_run(slurm_dir) == run_dir  # the same run, reopened
    record = final_record(run_dir)
    assert [a.number for a in record.attempts] == [1, 2]
    assert record.attempts[0] == first  # never rewritten
    assert record.attempts[1].status == record.status == "cancelled", job_output(slurm_dir)
    assert record.failed_rank is None, record.error
    rank1 = rank_json(run_dir, 1)
    assert [a["number"] for a in rank1["attempts"]] == [1, 2]
    # Only rank 0 asks SLURM; rank 1 records what it saw: the signal.
    assert rank1["attempts"][0]["status"] == "interrupted"


def test_a_failing_task_fails_the_job_and_names_its_rank(slurm_dir: Path) -> None:
    recipe = slurm_recipe(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    job = sbatch(
        f"#!/bin/bash\nsrun -n 2 {RUN} {recipe} --entry {entry('fail_on_rank1')}\n",
        *("-n", "2"),
        cwd=slurm_dir,
        env=env,
    )
    info = wait_job(job, timeout_s=120)  # no hang: bounded well below join_timeout_s
    assert info["JobState"] == "FAILED"
    record = run_json(only_run(slurm_dir))
    assert (record["status"], record["failed_rank"]) == ("failed", 1)
    assert "rank 1 fails on purpose" in json.dumps(record["error"])


def test_a_preemption_requeues_the_readme_job_and_attempt_2_completes(slurm_dir: Path) -> None:
    """The README's job script (two tasks on n2), preempted by a job of the
    higher-priority partition (PreemptMode=REQUEUE, GraceTime=5): attempt 1
    ``preempted``, no rank blamed; it used to end FAILED and never be requeued. Requeued,
    attempt 2 completes in the same run directory; attempt 1 stays as written."""
    slurm_recipe(slurm_dir)  # recipe.yaml, as the README's script names it
    train_py(slurm_dir)
    env = job_env(slurm_dir, MARK_DIR=str(slurm_dir))
    script = readme_job_script("PreemptTime")
    job = sbatch(script, *("-p", "low", "-w", "n2", "-n", "2"), cwd=slurm_dir, env=env)
    wait_until("attempt 1 to be live", lambda: len(marks(slurm_dir, "live-")) == 2, 120)
    run_dir = only_run(slurm_dir)
    high = sbatch(
        "#!/bin/bash\nsleep 1\n",
        *("-p", "high", "-w", "n2", "-c", "2"),
        cwd=slurm_dir,
        env=env,
        name="high",
    )
    first = first_attempt_closed(run_dir)
    assert first.status == "preempted", job_output(slurm_dir)
    assert first.reason is not None and first.reason.startswith("SIGTERM; SLURM says"), first
    requeued_then_released(job)
    (slurm_dir / "stop").touch()
    info = wait_job(job, timeout_s=180)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), job_output(slurm_dir)
    assert wait_job(high)["JobState"] == "COMPLETED"

    assert marks(slurm_dir, "live-rank0-") == ["live-rank0-attempt1", "live-rank0-attempt2"]
    assert only_run(slurm_dir) == run_dir
    record = final_record(run_dir)
    assert [a.number for a in record.attempts] == [1, 2]
    assert record.attempts[0] == first  # never rewritten
    assert record.attempts[1].status == record.status == "completed"
    assert record.failed_rank is None
    rank1 = rank_json(run_dir, 1)["attempts"]  # rank 1 saw the signal, rank 0 asked SLURM
    assert [a["status"] for a in rank1] == ["interrupted", "completed"]


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
    assert rank_json(run_dir, 1)["status"] == "completed"
    assert info["NodeList"] == "n[1-2]"


def test_the_time_limit_ends_the_run_as_timeout_and_slurm_says_timeout(
    time_limit_job: tuple[Future[dict[str, str]], Path],
) -> None:
    """Last in this file: the job submitted first has had its minute by now."""
    watch, directory = time_limit_job
    info = watch.result(timeout=240)  # SLURM checks time limits every 30 s or so
    job = info["JobId"]
    assert info["JobState"] == "TIMEOUT", job_output(directory)
    assert marks(directory, "live-") == ["live-rank0-attempt1"]
    record: Any = final_record(only_run(directory))
    assert record.status == "timeout", job_output(directory)
    assert record.interruption is not None and record.interruption.signal == "SIGTERM"
    assert record.interruption.scheduler_reason == "TimeLimit"
    assert record.scheduler is not None and record.scheduler.job_id == job
    assert record.failed_rank is None
