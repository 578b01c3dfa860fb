"""Every torch.distributed launch joins one run, with the real launchers that name no
job: ``torch.multiprocessing.spawn`` with the process group initialised before the
orchestrator (its ranks meet through the group's store) and without it (the rendezvous
endpoint ``MASTER_ADDR:MASTER_PORT`` keys the job), and a PyTorchJob-style launch:
processes started apart with ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``
only, no torchrun. Every launch and wait is bounded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_dirs, write_job

from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS
from orchestrator_fsm.lifecycle.record import read_run

pytestmark = pytest.mark.slow

LAUNCH_TIMEOUT_S = 240

# A user's DDP script started by torch.multiprocessing.spawn, as pytorch/examples'
# imagenet starts it: the group (when asked) is initialised before the orchestrator.
SPAWN_SCRIPT = textwrap.dedent(
    """
    import datetime, json, os, sys, time
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from orchestrator_fsm import Config, RootOrchestrator
    from orchestrator_fsm.phases import steps

    def failing(name):
        def step(run):
            raise RuntimeError(f"{name} broke on rank {run.rank}")
        return step

    def worker(rank, world, recipe, plan):
        kwargs = {}
        if plan["group"]:
            dist.init_process_group(
                "gloo", init_method=f"tcp://127.0.0.1:{plan['port']}", rank=rank,
                world_size=world, timeout=datetime.timedelta(seconds=120),
            )
            if plan.get("explicit_rank"):
                kwargs = {"rank": rank}
        else:
            kwargs = {"rank": rank, "world_size": world}
        if plan.get("rank0_fails_in") and rank == 0:
            steps.STEPS[plan["rank0_fails_in"]] = failing(plan["rank0_fails_in"])
        started = time.monotonic()
        try:
            with RootOrchestrator(Config.from_recipe(recipe), **kwargs) as orch:
                print(json.dumps({"rank": orch.rank, "world": orch.world_size,
                                  "root": str(orch.paths.root)}), flush=True)
                if plan["group"]:
                    dist.barrier()
        except Exception as exc:
            print(json.dumps({"rank": rank, "error": f"{type(exc).__name__}: {exc}",
                              "after_s": time.monotonic() - started}), flush=True)
            if rank == 0:
                time.sleep(plan.get("rank0_lingers", 0))  # mp.spawn kills the rest
            raise
        finally:
            if plan["group"] and dist.is_initialized():
                dist.destroy_process_group()

    if __name__ == "__main__":
        recipe, plan = sys.argv[1], json.loads(sys.argv[2])
        if not plan["group"]:
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(plan["port"])
        mp.spawn(worker, args=(plan["world"], recipe, plan), nprocs=plan["world"], join=True)
    """
)

# One process of a PyTorchJob-style launch: the launcher gave it its variables only.
ENV_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from orchestrator_fsm import Config, RootOrchestrator
    from orchestrator_fsm.phases import steps

    recipe, plan = sys.argv[1], json.loads(sys.argv[2])
    rank = int(os.environ["RANK"])

    def failing(name):
        def step(run):
            raise RuntimeError(f"{name} broke on rank {run.rank}")
        return step

    def dying(run):
        os._exit(3)  # a rank 0 killed outright: no word to anyone

    if plan.get("rank0_fails_in") and rank == 0:
        steps.STEPS[plan["rank0_fails_in"]] = failing(plan["rank0_fails_in"])
    if plan.get("rank0_dies_in") and rank == 0:
        steps.STEPS[plan["rank0_dies_in"]] = dying
    if plan.get("group"):
        import datetime
        import torch.distributed as dist
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    started = time.monotonic()
    try:
        with RootOrchestrator(Config.from_recipe(recipe)) as orch:
            print(json.dumps({"rank": orch.rank, "world": orch.world_size,
                              "root": str(orch.paths.root)}), flush=True)
    except Exception as exc:
        print(json.dumps({"rank": rank, "error": f"{type(exc).__name__}: {exc}",
                          "after_s": time.monotonic() - started}), flush=True)
        raise
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables, one thread per process."""
    base = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV_VARS}
    return {**base, "OMP_NUM_THREADS": "1", **extra}


def verdicts(output: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        start = line.find('{"rank"')
        if start >= 0:
            lines.append(json.loads(line[start:]))
    return sorted(lines, key=lambda v: int(v["rank"]))


def spawn(tmp_path: Path, plan: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    recipe, script = write_job(tmp_path, SPAWN_SCRIPT)
    plan = {"port": free_port(), **plan}
    return subprocess.run(
        [sys.executable, str(script), str(recipe), json.dumps(plan)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
        check=False,
    )


def assert_one_run(tmp_path: Path, result: subprocess.CompletedProcess[str], world: int) -> Path:
    assert result.returncode == 0, result.stderr[-4000:]
    said = verdicts(result.stdout)
    assert [v["rank"] for v in said] == list(range(world)), result.stdout
    assert {v["world"] for v in said} == {world}
    roots = {v["root"] for v in said}
    assert len(roots) == 1, roots
    [root] = run_dirs(tmp_path / "outputs")
    assert str(root) in roots
    record = read_run(root)
    assert record.status == "completed"
    assert sorted((r.rank, r.status) for r in record.ranks) == [
        (rank, "completed") for rank in range(1, world)
    ]
    return root


@pytest.mark.parametrize(
    ("world", "explicit_rank"), [(2, True), (4, False)], ids=["2 ranks, rank=", "4 ranks"]
)
def test_mp_spawn_with_the_process_group_initialised_is_one_run(
    tmp_path: Path, world: int, explicit_rank: bool
) -> None:
    # Before issue 22, rank 1 failed: "InfrastructureError: ... the launcher names no job"
    # (given rank=), or every process was rank 0 and the lock refused all but one.
    result = spawn(tmp_path, {"group": True, "world": world, "explicit_rank": explicit_rank})
    assert_one_run(tmp_path, result, world)


def test_mp_spawn_without_a_process_group_meets_at_the_rendezvous_endpoint(
    tmp_path: Path,
) -> None:
    result = spawn(tmp_path, {"group": False, "world": 2})
    assert_one_run(tmp_path, result, 2)


def test_rank_0_failing_in_a_process_group_fails_the_others_at_once(tmp_path: Path) -> None:
    plan = {"group": True, "world": 2, "rank0_fails_in": "provision", "rank0_lingers": 20}
    started = time.monotonic()
    result = spawn(tmp_path, plan)
    assert result.returncode != 0
    said = {v["rank"]: v for v in verdicts(result.stdout)}
    assert said[0]["error"] == "RuntimeError: provision broke on rank 0", result.stdout
    assert said[1]["error"].startswith("InfrastructureError: rank 0 failed"), said[1]
    assert "provision broke on rank 0" in said[1]["error"]
    # Told at once, well inside the 120 s join timeout: no hang.
    assert said[1]["after_s"] < 60, said[1]
    assert time.monotonic() - started < LAUNCH_TIMEOUT_S


def pytorchjob(
    tmp_path: Path, world: int, plan: dict[str, Any]
) -> list[subprocess.CompletedProcess[str]]:
    """Start ``world`` processes as a PyTorchJob does: each on its own (here through its
    own shell, so no two share a parent), with RANK, WORLD_SIZE, MASTER_ADDR and
    MASTER_PORT only."""
    recipe, script = write_job(tmp_path, ENV_SCRIPT)
    port = str(free_port())
    shell = ["sh", "-c", '"$@"; exit $?', "sh"]  # a parent of its own, not exec'd away
    procs = [
        subprocess.Popen(
            [*shell, sys.executable, str(script), str(recipe), json.dumps(plan)],
            env=clean_env(
                RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    return results


def test_a_pytorchjob_style_launch_without_torchrun_is_one_run(tmp_path: Path) -> None:
    results = pytorchjob(tmp_path, 2, {})
    merged = subprocess.CompletedProcess(
        [],
        max(r.returncode for r in results),
        "".join(r.stdout for r in results),
        "".join(r.stderr for r in results),
    )
    root = assert_one_run(tmp_path, merged, 2)
    assert read_run(root).job is not None and "rdzv-127-0-0-1" in str(read_run(root).job)


def test_rank_0_of_a_pytorchjob_style_launch_failing_fails_the_others_at_once(
    tmp_path: Path,
) -> None:
    results = pytorchjob(tmp_path, 2, {"rank0_fails_in": "provision"})
    said = {v["rank"]: v for r in results for v in verdicts(r.stdout)}
    assert all(r.returncode != 0 for r in results)
    assert said[1]["error"].startswith("InfrastructureError: rank 0 failed"), said[1]
    assert said[1]["after_s"] < 60, said[1]


def test_a_rank_whose_rank_0_vanished_from_the_process_group_says_so(tmp_path: Path) -> None:
    # The group's store lives in rank 0's process: its loss is rank 0's, told at once.
    results = pytorchjob(tmp_path, 2, {"group": True, "rank0_dies_in": "provision"})
    assert results[0].returncode == 3
    said = {v["rank"]: v for r in results for v in verdicts(r.stdout)}
    assert said[1]["error"].startswith("InfrastructureError: rank 1 of 2 lost the process"), said
    assert "rank 0's process is gone" in said[1]["error"]
    assert said[1]["after_s"] < 60, said[1]


REPORT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from orchestrator_fsm import Config, RootOrchestrator

    with RootOrchestrator(Config.from_recipe(sys.argv[1])) as orch:
        orch.log_environment_report()
        print(json.dumps({"rank": orch.rank, "threads": orch.applied_threads,
                          "torch": torch.get_num_threads(),
                          "root": str(orch.paths.root)}), flush=True)
    """
)


def test_under_torchrun_each_rank_keeps_the_launchers_one_thread(tmp_path: Path) -> None:
    # Issue 22: on 2 CPUs, 2 ranks each took 2 threads and overrode torchrun's
    # OMP_NUM_THREADS=1 (1.33-1.39x slower). torchrun sets it when it is unset.
    recipe, script = write_job(tmp_path, REPORT_SCRIPT, hardware={"num_workers": 0})
    env = {k: v for k, v in clean_env().items() if k != "OMP_NUM_THREADS"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    result = subprocess.run(
        [*command, "--nproc_per_node=2", str(script), str(recipe)],
        env=env,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    said = verdicts(result.stdout)
    assert [(v["threads"], v["torch"]) for v in said] == [(1, 1), (1, 1)], said
    [root] = run_dirs(tmp_path / "outputs")
    threads = json.loads((root / "reports" / "environment.json").read_text())["threads"]
    assert threads["applied_threads"] == 1
    assert threads["basis"] == "OMP_NUM_THREADS=1 from the launcher"
    assert threads["ranks_on_node"] == 2
