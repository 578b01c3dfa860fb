"""One run across ranks, nodes and restarts, with the real launchers: torchrun on CPU,
and SLURM launches simulated by the variables srun exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, run_dirs, write_job

from orchestrator_fsm.config import Config
from orchestrator_fsm.lifecycle.record import read_run
from orchestrator_fsm.phases.lock import InfrastructureManager

pytestmark = pytest.mark.slow

LAUNCH_TIMEOUT_S = 180

# A user's script: the with-block, a verdict line per rank, and faults on request.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from orchestrator_fsm import Config, RootOrchestrator
    from orchestrator_fsm.phases import steps

    recipe, plan = sys.argv[1], json.loads(sys.argv[2])
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    def failing(name):
        def step(run):
            raise RuntimeError(f"{name} broke on rank {run.rank}")
        return step

    if plan.get("rank0_fails_in") and rank == 0:
        steps.STEPS[plan["rank0_fails_in"]] = failing(plan["rank0_fails_in"])  # type: ignore
    try:
        with RootOrchestrator(Config.from_recipe(recipe)) as orch:
            print(json.dumps({"rank": orch.rank, "root": str(orch.paths.root)}), flush=True)
            if rank == plan.get("failing_rank") and attempt in plan.get("fail_in", [0]):
                raise ValueError(f"rank {rank} lost its data")
            if rank == 0 and plan.get("rank0_waits"):
                time.sleep(plan["rank0_waits"])
    except Exception as exc:
        print(json.dumps({"rank": rank, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        said = Path(recipe).parent / "said"
        said.mkdir(exist_ok=True)
        (said / str(rank)).touch()
        if rank == 0:
            # torchrun stops every rank once one exits: a failed rank 0 waits (bounded)
            # until the others, maybe still importing torch, said what they saw.
            others = range(1, int(os.environ.get("WORLD_SIZE", "1")))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all((said / str(r)).exists() for r in others):
                time.sleep(0.05)
        raise
    """
)


def write(tmp_path: Path, **sections: Any) -> tuple[Path, Path]:
    return write_job(tmp_path, SCRIPT, **sections)


def env(**extra: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE")
    }
    return {**base, "OMP_NUM_THREADS": "1", **extra}


def torchrun(
    script: Path, recipe: Path, plan: dict[str, Any], *, nproc: int = 2, restarts: int = 0
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        f"--max-restarts={restarts}",
        str(script),
        str(recipe),
        json.dumps(plan),
    ]
    return subprocess.run(
        command, env=env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, check=False
    )


def verdicts(output: str) -> list[dict[str, Any]]:
    lines = []
    for line in output.splitlines():
        start = line.find('{"rank"')
        if start >= 0:
            lines.append(json.loads(line[start:]))
    return lines


def test_a_torchrun_job_of_four_ranks_is_one_run(tmp_path: Path) -> None:
    recipe, script = write(tmp_path)
    result = torchrun(script, recipe, {}, nproc=4)
    assert result.returncode == 0, result.stderr[-3000:]
    (root,) = run_dirs(tmp_path / "outputs")
    seen = verdicts(result.stdout)
    assert sorted(v["rank"] for v in seen) == [0, 1, 2, 3]
    assert {v["root"] for v in seen} == {str(root)}
    run = read_run(root)
    assert run.status == "completed" and run.world_size == 4
    assert [(r.rank, r.status) for r in run.ranks] == [
        (1, "completed"),
        (2, "completed"),
        (3, "completed"),
    ]
    assert run.effective_status == "completed"
    assert [a.number for a in run.attempts] == [1]
    lines = (root / "lifecycle.jsonl").read_text(encoding="utf-8").splitlines()
    assert {json.loads(line)["attempt"] for line in lines} == {1}


def test_each_rank_marks_its_lines_in_the_shared_stdout_log(tmp_path: Path) -> None:
    recipe, script = write(tmp_path)
    result = torchrun(script, recipe, {}, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    (root,) = run_dirs(tmp_path / "outputs")
    lines = (root / "logs" / "stdout.log").read_text(encoding="utf-8").splitlines()
    assert sorted(lines) == sorted(
        f'[rank{rank}] {{"rank": {rank}, "root": "{root}"}}' for rank in (0, 1)
    )


def test_a_failing_rank_makes_the_job_failed_and_names_itself(tmp_path: Path) -> None:
    recipe, script = write(tmp_path)
    # Rank 0 works without collectives; torchrun stops it when rank 1 fails.
    result = torchrun(script, recipe, {"failing_rank": 1, "rank0_waits": 60})
    assert result.returncode != 0
    (root,) = run_dirs(tmp_path / "outputs")
    run = read_run(root)
    # Rank 0 was ended by torchrun's SIGTERM; its record is the job's all the same.
    assert run.status == "failed" and run.failed_rank == 1
    assert run.error is not None and run.error.message == "rank 1 lost its data"
    assert run.effective_status == "failed"
    first = run.first_failure
    assert first is not None and first.rank == 1
    assert first.error is not None
    assert first.error.message == "rank 1 lost its data"
    assert first.error.step == "pipeline"
    assert first.error.where is not None and first.error.where.startswith(str(script))


def test_rank_0_failing_early_makes_the_others_fail_at_once(tmp_path: Path) -> None:
    recipe, script = write(tmp_path)
    result = torchrun(script, recipe, {"rank0_fails_in": "acquire_lock"})
    assert result.returncode != 0
    errors = {v["rank"]: v["error"] for v in verdicts(result.stdout) if "error" in v}
    assert "acquire_lock broke on rank 0" in errors[0]
    # Not a timeout: rank 1 read rank 0's failure from its record.
    assert errors[1].startswith("InfrastructureError: rank 0's run"), errors
    assert "acquire_lock broke on rank 0" in errors[1]


def test_rank_0_refused_at_the_run_lock_makes_the_others_fail_at_once(tmp_path: Path) -> None:
    recipe, script = write(tmp_path)
    cfg = Config.from_recipe(recipe)
    holder = InfrastructureManager()
    holder.bind_run("the-holding-run")
    holder.prepare_environment(cfg)
    try:
        result = torchrun(script, recipe, {})
    finally:
        holder.release_resources(cfg)
    assert result.returncode != 0
    errors = {v["rank"]: v["error"] for v in verdicts(result.stdout) if "error" in v}
    assert errors[0].startswith("LockContendedError: the run lock is taken"), errors
    assert "the-holding-run" in errors[0]
    # Not a timeout: rank 1 read from rank 0's record that it was refused.
    assert errors[1].startswith("InfrastructureError: rank 0's run"), errors
    assert "ended refused: LockContendedError" in errors[1]
    (root,) = [p for p in (tmp_path / "outputs").iterdir() if not p.name.startswith(".")]
    assert read_run(root).status == "refused"


def test_rank_0_failing_before_its_directory_exists_makes_the_others_fail_at_once(
    tmp_path: Path,
) -> None:
    recipe, script = write(tmp_path)
    result = torchrun(script, recipe, {"rank0_fails_in": "configure_runtime"})
    assert result.returncode != 0
    errors = {v["rank"]: v["error"] for v in verdicts(result.stdout) if "error" in v}
    assert errors[1].startswith(
        "InfrastructureError: rank 0 failed before its run directory existed"
    ), errors
    assert "configure_runtime broke on rank 0" in errors[1]
    assert run_dirs(tmp_path / "outputs") == []


def test_an_elastic_restart_resumes_into_the_same_run_directory(tmp_path: Path) -> None:
    recipe, script = write(tmp_path)
    result = torchrun(script, recipe, {"failing_rank": 1, "fail_in": [0]}, restarts=1)
    assert result.returncode == 0, result.stderr[-3000:]
    (root,) = run_dirs(tmp_path / "outputs")
    run = read_run(root)
    assert run.effective_status == "completed"
    assert [(a.number, a.restart_count) for a in run.attempts] == [(1, 0), (2, 1)]
    assert run.attempts[0].status in ("interrupted", "failed")
    assert run.attempts[0].reason is not None
    assert run.attempts[1].status == "completed"
    attempts = [
        json.loads(line)["attempt"]
        for line in (root / "lifecycle.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert attempts == sorted(attempts) and set(attempts) == {1, 2}


def srun_like(script: Path, recipe: Path, *, tasks: int, job: str, restart: int = 0) -> list[Any]:
    """The tasks of one srun step, started at once, with the variables srun exports."""
    procs = []
    for task in range(tasks):
        variables = env(
            SLURM_JOB_ID=job,
            SLURM_STEP_ID="0",
            SLURM_PROCID=str(task),
            SLURM_LOCALID=str(task),
            SLURM_NODEID="0",
            SLURM_NTASKS=str(tasks),
            SLURM_STEP_NUM_TASKS=str(tasks),
            SLURM_STEP_TASKS_PER_NODE=str(tasks),
            SLURM_RESTART_COUNT=str(restart),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(recipe), "{}"],
                env=variables,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
        results.append((proc.returncode, out, err))
    return results


def test_a_slurm_step_and_its_requeue_are_one_run_with_two_attempts(tmp_path: Path) -> None:
    recipe, script = write(tmp_path)
    first = srun_like(script, recipe, tasks=2, job="8812")
    assert [code for code, _, _ in first] == [0, 0], [err[-2000:] for _, _, err in first]
    (root,) = run_dirs(tmp_path / "outputs")
    again = srun_like(script, recipe, tasks=2, job="8812", restart=1)
    assert [code for code, _, _ in again] == [0, 0], [err[-2000:] for _, _, err in again]
    assert run_dirs(tmp_path / "outputs") == [root]
    run = read_run(root)
    assert [(a.number, a.status) for a in run.attempts] == [(1, "completed"), (2, "completed")]
    assert run.effective_status == "completed"
    assert [(r.rank, r.restart_count) for r in run.ranks] == [(1, 1)]
    shown = cli("inspect", str(root), cwd=tmp_path, env=env(), timeout_s=LAUNCH_TIMEOUT_S)
    assert "1 completed, 2 completed" in shown.stdout, shown.stdout
    assert "1 completed" in shown.stdout.split("other ranks", 1)[1]
    # Another job with the same recipe is another run.
    srun_like(script, recipe, tasks=2, job="8813")
    assert len(run_dirs(tmp_path / "outputs")) == 2


ENTRIES = textwrap.dedent(
    """
    import time

    def calm(orch):
        orch.run_logger.info("rank %d trains", orch.rank)

    def rank1_fails(orch):
        if orch.rank == 1:
            raise RuntimeError("rank 1 ran out of data")
    """
)


def torchrun_cli(tmp_path: Path, recipe: Path, entry: str) -> subprocess.CompletedProcess[str]:
    entries = tmp_path / "entries.py"
    entries.write_text(ENTRIES, encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "orchestrator_fsm",
        "run",
        str(recipe),
        "--entry",
        f"{entries}:{entry}",
    ]
    return subprocess.run(
        command, env=env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S, check=False
    )


def test_the_cli_under_torchrun_speaks_once_for_the_job(tmp_path: Path) -> None:
    recipe, _ = write(tmp_path)
    result = torchrun_cli(tmp_path, recipe, "calm")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("recipe: ") == 1
    assert result.stdout.count("status: completed") == 1
    (root,) = run_dirs(tmp_path / "outputs")
    assert result.stdout.strip().splitlines()[-1] == "status: completed"
    assert read_run(root).effective_status == "completed"


def test_the_cli_under_torchrun_exits_with_the_jobs_truth(tmp_path: Path) -> None:
    recipe, _ = write(tmp_path)
    result = torchrun_cli(tmp_path, recipe, "rank1_fails")
    assert result.returncode != 0
    (root,) = run_dirs(tmp_path / "outputs")
    run = read_run(root)
    assert run.effective_status == "failed"
    assert run.first_failure is not None and run.first_failure.rank == 1
    assert "rank 1 ran out of data" in result.stderr
    assert "status: completed" not in result.stdout


def test_resuming_a_named_run_directory_adds_an_attempt(tmp_path: Path) -> None:
    from orchestrator_fsm import Config, RootOrchestrator

    recipe, _ = write(tmp_path)
    cfg = Config.from_recipe(recipe)
    with RootOrchestrator(cfg) as first:
        assert first.paths is not None
        root = first.paths.root
        (root / "checkpoints" / "last.pt").write_bytes(b"weights")
    with RootOrchestrator(cfg, resume=root) as again:
        assert again.paths == first.paths
        assert (root / "checkpoints" / "last.pt").read_bytes() == b"weights"
    run = read_run(root)
    assert [(a.number, a.status) for a in run.attempts] == [(1, "completed"), (2, "completed")]
    assert run_dirs(tmp_path / "outputs") == [root]


def test_resuming_a_run_of_another_config_is_refused_unless_forced(tmp_path: Path) -> None:
    from orchestrator_fsm import Config, RootOrchestrator
    from orchestrator_fsm.errors import InfrastructureError

    recipe, _ = write(tmp_path)
    with RootOrchestrator(Config.from_recipe(recipe)) as first:
        assert first.paths is not None
        root = first.paths.root
    other = Config.from_recipe(recipe, ["training.seed=99"])
    refused = RootOrchestrator(other, resume=root)
    with pytest.raises(InfrastructureError, match="it ran another config"), refused:
        pass
    assert len(read_run(root).attempts) == 1
    with RootOrchestrator(other, resume=root, force_resume=True):
        pass
    assert len(read_run(root).attempts) == 2


def test_run_resume_on_the_command_line(tmp_path: Path) -> None:
    recipe, _ = write(tmp_path)
    entries = tmp_path / "entries.py"
    entries.write_text(ENTRIES, encoding="utf-8")

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = ["run", str(recipe), "--entry", f"{entries}:calm", *extra]
        return cli(*argv, cwd=tmp_path, env=env(), timeout_s=LAUNCH_TIMEOUT_S)

    assert run().returncode == 0
    (root,) = run_dirs(tmp_path / "outputs")
    resumed = run("--resume", str(root))
    assert resumed.returncode == 0, resumed.stderr
    assert f"run directory: {root}" in resumed.stdout
    assert len(read_run(root).attempts) == 2
    missing = run("--resume", str(tmp_path / "nope"))
    assert missing.returncode == 1
    assert "cannot resume" in missing.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_torchrun_agents_on_localhost_form_one_two_node_job(tmp_path: Path) -> None:
    """Two agents meeting through c10d rendezvous stand in for two nodes."""
    recipe, script = write(tmp_path)
    port = _free_port()
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=two-node-job",
                "--max-restarts=0",
                str(script),
                str(recipe),
                "{}",
            ],
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for agent in agents:
            outputs.append(agent.communicate(timeout=LAUNCH_TIMEOUT_S))
    finally:
        for agent in agents:
            agent.kill()
    assert [agent.returncode for agent in agents] == [0, 0], [err[-2000:] for _, err in outputs]
    (root,) = run_dirs(tmp_path / "outputs")
    seen = [v for out, _ in outputs for v in verdicts(out)]
    assert sorted(v["rank"] for v in seen) == [0, 1]
    assert {v["root"] for v in seen} == {str(root)}
    run = read_run(root)
    assert run.world_size == 2 and run.effective_status == "completed"
    assert [(r.rank, r.status) for r in run.ranks] == [(1, "completed")]
