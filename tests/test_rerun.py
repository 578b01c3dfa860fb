"""``orchestrator-fsm rerun`` and ``diff``: the rerun bundle, drift, and the verdict.

Every run here is a real ``orchestrator-fsm run`` process writing real files under
``tmp_path``; reruns and diffs are real CLI processes too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import cli, cli_command, isolated, minimal_recipe, run_dirs

from orchestrator_fsm.cli.diff import EXIT_DIFFERENT
from orchestrator_fsm.cli.rerun import EXIT_DIVERGED, EXIT_DRIFT, EXIT_WITHIN_TOLERANCE
from orchestrator_fsm.git_state import read_git_state
from orchestrator_fsm.layout import RERUNS_FILE, bundle_file
from orchestrator_fsm.lifecycle.record import read_run
from orchestrator_fsm.reproduce.bundle import working_directory

PIPELINES = """
import atexit
import os
import random


def steady(orch):
    for step in (1, 2, 3):
        orch.log_metrics({"loss": 1.0 / step, "acc": 0.25 * step}, step=step)
    orch.log_summary({"final": 0.75})


def noisy(orch):
    # Unseeded: SystemRandom draws from the OS, never from the run's seeded generators.
    for step in (1, 2, 3, 4):
        noise = random.SystemRandom().random() if step >= 3 else 0.0
        orch.log_metrics({"loss": 1.0 / step + noise}, step=step)


def loud(orch):
    # A pipeline may print anything, even a line like the command's own last words,
    # and even after them (at interpreter exit).
    atexit.register(print, f"run directory: {os.getcwd()}", flush=True)
    orch.log_metrics({"loss": 0.5}, step=1)


def jitter(orch):
    for step in (1, 2):
        tiny = random.SystemRandom().uniform(1e-12, 1e-9)
        orch.log_metrics({"loss": 1.0 / step + tiny}, step=step)
"""


def run_dir_of(result: subprocess.CompletedProcess[str]) -> Path:
    """The run directory the command printed: its line just before ``status: ...``."""
    lines = result.stdout.splitlines()
    found = [
        line.removeprefix("run directory: ").strip()
        for line, after in itertools.pairwise(lines)
        if line.startswith("run directory: ") and after.startswith("status: ")
    ]
    assert found, result.stdout + result.stderr
    return Path(found[-1])


def drift_rows(stdout: str) -> list[tuple[str, str, str]]:
    """The drift report's rows: ``(kind, key, "before -> after")``."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("  ") and " -> " in line:
            kind, key, change = line.split(None, 2)
            rows.append((kind, key, change))
    return rows


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A recipe and a pipeline file in ``tmp_path`` (the runs' working directory)."""
    recipe = minimal_recipe(tmp_path, training={"seed": 1234, "lr": 0.1})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "pipe.py").write_text(PIPELINES)
    return tmp_path


def run_pipeline(
    project: Path, function: str, *overrides: str, env: dict[str, str] | None = None
) -> Path:
    result = cli(
        "run", "recipe.yaml", "--entry", f"pipe.py:{function}", *overrides, cwd=project, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir_of(result)


@pytest.mark.slow
def test_the_bundle_holds_what_a_rerun_needs(project: Path) -> None:
    run = run_pipeline(project, "steady", "--set", "training.lr=0.2")
    bundle = json.loads(bundle_file(run).read_text())
    assert bundle["overrides"] == ["training.lr=0.2"]
    assert bundle["entry"]["spec"] == "pipe.py:steady"
    expected = hashlib.sha256((project / "pipe.py").read_bytes()).hexdigest()
    assert bundle["entry"]["sha256"] == expected
    assert bundle["seeds"]["seed"] == 1234
    assert bundle["command"]["cwd"] == str(project)
    assert bundle["config"] == {
        "file": "reports/config.yaml",
        "sha256": hashlib.sha256((run / "reports" / "config.yaml").read_bytes()).hexdigest(),
        "redacted_keys": [],
    }
    assert bundle["environment"]["torch"]["version"]
    assert "mkl" in bundle["environment"]["torch"]
    libraries = bundle["loaded_libraries"]
    if Path("/proc/self/maps").exists():
        assert any(item["soname"].startswith("libtorch") for item in libraries)
    assert "orchestrator-fsm" in bundle["packages"]


def test_a_truncated_diff_is_recorded_as_truncated(tmp_path: Path) -> None:
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q", str(tmp_path)], check=True)
    big = tmp_path / "big.txt"
    big.write_text("x\n")
    subprocess.run([*git, "add", "big.txt"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "one"], cwd=tmp_path, check=True)
    with working_directory(str(tmp_path)):
        clean = read_git_state()
        big.write_text("".join(f"line {i} {'y' * 60}\n" for i in range(20_000)))
        changed = read_git_state()
    assert clean is not None
    assert changed is not None
    assert clean.bundle_record()["diff_truncated"] is False
    state = changed.bundle_record()
    assert state["dirty"] == "true"
    assert state["diff_truncated"] is True


@pytest.mark.slow
def test_a_changed_override_is_drift_and_strict_refuses(project: Path) -> None:
    run = run_pipeline(project, "steady")
    result = cli("rerun", str(run), "--strict", "--set", "training.lr=0.5", cwd=project)
    assert result.returncode == EXIT_DRIFT, result.stdout + result.stderr
    assert drift_rows(result.stdout) == [
        ("config", "training.lr", "0.1 -> 0.5"),
        ("overrides", "training.lr", "- -> training.lr=0.5"),
    ]
    assert "refused" in result.stderr
    assert not (run / RERUNS_FILE).exists()  # nothing was started


@pytest.mark.slow
def test_an_edited_entry_file_is_drift_with_current_and_rerun_as_it_ran_without(
    project: Path,
) -> None:
    run = run_pipeline(project, "steady")
    with (project / "pipe.py").open("a") as pipe:
        pipe.write("\n# edited after the run\n")
    result = cli("rerun", str(run), "--strict", "--current", cwd=project)
    assert result.returncode == EXIT_DRIFT, result.stdout + result.stderr
    assert [(kind, key) for kind, key, _ in drift_rows(result.stdout)] == [("entry", "sha256")]
    assert "code: today's working tree (--current)" in result.stdout
    # Without --current (no git checkout here), the file the run kept is what reruns.
    as_it_ran = cli("rerun", str(run), "--strict", cwd=project)
    assert as_it_ran.returncode == 0, as_it_ran.stdout + as_it_ran.stderr
    assert "code: the run's saved copy of" in as_it_ran.stdout


@pytest.mark.slow
def test_a_changed_package_version_is_drift(project: Path) -> None:
    site = project / "site"
    info = site / "fakepkg-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n")
    paths = [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    run = run_pipeline(project, "steady", env=env)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakepkg\nVersion: 2.0\n")
    info.rename(site / "fakepkg-2.0.dist-info")
    result = cli("rerun", str(run), "--strict", cwd=project, env=env)
    assert result.returncode == EXIT_DRIFT, result.stdout + result.stderr
    assert drift_rows(result.stdout) == [("packages", "fakepkg", "1.0 -> 2.0")]


@pytest.mark.slow
def test_a_changed_seed_is_drift(project: Path) -> None:
    run = run_pipeline(project, "steady")
    result = cli("rerun", str(run), "--strict", "--set", "training.seed=7", cwd=project)
    assert result.returncode == EXIT_DRIFT, result.stdout + result.stderr
    rows = drift_rows(result.stdout)
    assert ("config", "training.seed", "1234 -> 7") in rows
    assert ("seeds", "seed", "1234 -> 7") in rows
    assert ("seeds", "torch", "1234 -> 7") in rows
    assert {kind for kind, _, _ in rows} == {"config", "overrides", "seeds"}


@pytest.mark.slow
def test_an_unseeded_pipeline_diverges_at_the_step_the_noise_enters(project: Path) -> None:
    run = run_pipeline(project, "noisy")
    result = cli("rerun", str(run), "--strict", cwd=project)
    assert result.returncode == EXIT_DIVERGED, result.stdout + result.stderr
    assert "drift: none" in result.stdout
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("diverged at step 3: loss ")
    lines = (run / RERUNS_FILE).read_text().splitlines()
    assert [json.loads(line)["verdict"]["step"] for line in lines] == [3]


@pytest.mark.slow
def test_a_tolerance_turns_tiny_differences_into_within_tolerance(project: Path) -> None:
    run = run_pipeline(project, "jitter")
    exact = cli("rerun", str(run), cwd=project)
    assert exact.returncode == EXIT_DIVERGED, exact.stdout + exact.stderr
    assert exact.stdout.strip().splitlines()[-1].startswith("diverged at step 1: loss ")
    loose = cli("rerun", str(run), "--atol", "1e-6", cwd=project)
    assert loose.returncode == EXIT_WITHIN_TOLERANCE, loose.stdout + loose.stderr
    assert loose.stdout.strip().splitlines()[-1].startswith("within tolerance")


@pytest.mark.slow
def test_a_rerun_that_needs_a_redacted_secret_names_it(project: Path) -> None:
    run = run_pipeline(project, "steady", "--set", "dataset.api_key=s3cret")
    refused = cli("rerun", str(run), cwd=project)
    assert refused.returncode == 2
    assert "redacted secrets at dataset.api_key" in refused.stderr
    assert "--set dataset.api_key=VALUE" in refused.stderr
    given = cli("rerun", str(run), "--strict", "--set", "dataset.api_key=s3cret", cwd=project)
    assert given.returncode == 0, given.stdout + given.stderr
    assert given.stdout.strip().splitlines()[-1] == "identical"
    assert "s3cret" not in bundle_file(run_dir_of(given)).read_text()


def test_a_directory_without_a_bundle_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("rerun", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "rerun.json does not exist" in result.stderr


@pytest.mark.slow
def test_diff_shows_exactly_the_changed_override(project: Path) -> None:
    first = run_pipeline(project, "steady", *isolated(project), "--set", "training.lr=0.1")
    second = run_pipeline(project, "steady", *isolated(project), "--set", "training.lr=0.2")
    result = cli("diff", str(first), str(second), "--json", cwd=project)
    assert result.returncode == EXIT_DIFFERENT, result.stderr
    data = json.loads(result.stdout)
    changed = [(d["kind"], d["key"]) for d in data["differences"] if not d["note"]]
    assert changed == [("config", "training.lr"), ("overrides", "training.lr")]
    assert data["metrics"]["status"] == "identical"
    assert data["differ"] is True
    table = cli("diff", str(first), str(second), cwd=project)
    assert table.returncode == EXIT_DIFFERENT, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()[3:] if line.startswith("config")]
    assert rows == [["config", "training.lr", "0.1", "0.2"]]

    same = run_pipeline(project, "steady", *isolated(project), "--set", "training.lr=0.1")
    alike = cli("diff", str(first), str(same), "--json", cwd=project)
    assert alike.returncode == 0, alike.stdout + alike.stderr
    assert json.loads(alike.stdout)["differ"] is False


@pytest.mark.slow
def test_two_strict_reruns_of_the_demo_are_identical(tmp_path: Path) -> None:
    small = ["hardware.reproducible=true", "training.epochs=2", "dataset.num_samples=128"]
    original = cli("run", *small, *isolated(tmp_path), cwd=tmp_path)
    assert original.returncode == 0, original.stdout + original.stderr
    run = run_dir_of(original)
    for _ in range(2):
        rerun = cli("rerun", str(run), "--strict", cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "drift: none" in rerun.stdout
        assert "checkpoint last.pt: " in rerun.stdout
        assert rerun.stdout.strip().splitlines()[-1] == "identical"
        assert read_run(run_dir_of(rerun)).rerun_of == str(run)
        shown = cli("inspect", str(run_dir_of(rerun)), cwd=tmp_path)
        assert "rerun of" in shown.stdout
    reruns = [json.loads(line) for line in (run / RERUNS_FILE).read_text().splitlines()]
    assert [line["verdict"]["status"] for line in reruns] == ["identical", "identical"]


def test_gpu_models_are_read_from_the_driver_listing(tmp_path: Path) -> None:
    from orchestrator_fsm.environment import _gpus

    for index, model in enumerate(("NVIDIA H200", "NVIDIA A100-SXM4-80GB")):
        folder = tmp_path / f"0000:0{index}:00.0"
        folder.mkdir()
        (folder / "information").write_text(f"Model: \t\t {model}\nIRQ:   123\n")
    assert _gpus(tmp_path) == ["NVIDIA H200", "NVIDIA A100-SXM4-80GB"]


def test_run_writes_its_run_directory_where_it_is_asked_to(project: Path) -> None:
    told = project / "told" / "run-dir"
    told.parent.mkdir()
    result = cli(
        "run",
        "recipe.yaml",
        "--entry",
        "pipe.py:steady",
        "--run-dir-file",
        str(told),
        cwd=project,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert told.read_text(encoding="utf-8").strip() == str(run_dir_of(result))


@pytest.mark.slow
def test_rerun_finds_its_run_whatever_the_pipeline_prints(project: Path) -> None:
    original = run_pipeline(project, "loud")
    result = cli("rerun", str(original), cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    noted = json.loads((original / RERUNS_FILE).read_text().splitlines()[-1])
    rerun = Path(noted["run_dir"])
    assert rerun != project
    assert rerun.parent == original.parent
    assert read_run(rerun).rerun_of == str(original)
    assert noted["verdict"]["status"] == "identical"


# --- multi-process runs: relaunched with their ranks, or refused in one line ---------

DDP_PIPELINE = """
import torch
import torch.distributed as dist


def train(orch):
    # Seeded, and every rank's gradient enters the all-reduced sum: a rerun with
    # another number of ranks logs other losses.
    dist.init_process_group("gloo")
    generator = torch.Generator().manual_seed(orch.cfg.training.seed)
    weights = torch.zeros(4)
    for step in (1, 2, 3):
        grad = torch.randn(4, generator=generator) * (orch.rank + 1)
        dist.all_reduce(grad)
        weights -= 0.1 * grad
        orch.log_metrics({"loss": float(weights.pow(2).sum())}, step=step)
    if orch.rank == 0:
        torch.save({"weights": weights}, orch.paths.checkpoints / "last.pt")
    dist.barrier()
    dist.destroy_process_group()
"""

LAUNCH_TIMEOUT_S = 240


def launcher_free_env() -> dict[str, str]:
    """This process's environment without any launcher's variables (a launcher around
    the test run) and without ``OMP_NUM_THREADS``, which torchrun then sets itself."""
    from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS

    dropped = {*LAUNCHER_ENV_VARS, "OMP_NUM_THREADS", "MASTER_ADDR", "MASTER_PORT"}
    return {k: v for k, v in os.environ.items() if k not in dropped}


def torchrun_run(project: Path, *launcher: str) -> subprocess.Popen[str]:
    """``python -m torch.distributed.run LAUNCHER -m orchestrator_fsm run recipe.yaml
    --entry ddp.py:train`` started in ``project``."""
    command = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m"]
    command += ["orchestrator_fsm", "run", "recipe.yaml", "--entry", "ddp.py:train"]
    return subprocess.Popen(
        command,
        cwd=project,
        env=launcher_free_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(*procs: subprocess.Popen[str]) -> None:
    """Wait (bounded) for every process; fail with their output unless all exit 0."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    assert [code for code, _, _ in results] == [0] * len(procs), results


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def ddp_project(project: Path) -> Path:
    (project / "ddp.py").write_text(DDP_PIPELINE)
    return project


@pytest.mark.slow
def test_a_torchrun_job_is_rerun_with_its_ranks_and_compared(ddp_project: Path) -> None:
    finished(torchrun_run(ddp_project, "--standalone", "--nproc_per_node=2"))
    (original,) = run_dirs(ddp_project / "outputs")
    launch = json.loads(bundle_file(original).read_text())["launch"]
    assert launch | {"job_id": None} == {
        "launcher": "torchrun",
        "world_size": 2,
        "local_world_size": 2,
        "nodes": 1,
        "max_restarts": 0,
        "job_id": None,
        "slurm": None,
    }
    result = cli(
        "rerun", str(original), cwd=ddp_project, env=launcher_free_env(), timeout_s=LAUNCH_TIMEOUT_S
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # torchrun's own OMP_NUM_THREADS=1 is recreated by the relaunch: no drift.
    assert "drift: none" in result.stdout, result.stdout
    assert f"rerunning {original} (torchrun, 2 ranks on one node)" in result.stdout
    assert "ranks: 2 in the original, 2 in the rerun" in result.stdout
    assert "checkpoint last.pt: " in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "identical", result.stdout
    rerun = read_run(run_dir_of(result))
    assert rerun.rerun_of == str(original)
    assert rerun.world_size == 2
    assert [(rank.rank, rank.effective_status) for rank in rerun.ranks] == [(1, "completed")]


@pytest.mark.slow
def test_a_multi_node_torchrun_job_is_refused_in_one_line(ddp_project: Path) -> None:
    # Two torchrun agents on this host are two nodes of one job to torchrun.
    rendezvous = [
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--rdzv-id=two-nodes",
    ]
    finished(*(torchrun_run(ddp_project, *rendezvous) for _ in range(2)))
    (original,) = run_dirs(ddp_project / "outputs")
    result = cli("rerun", str(original), cwd=ddp_project, env=launcher_free_env())
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        f"error: cannot rerun {original}: its 2 ranks ran under torchrun on 2 nodes"
    )
    assert "on each of the 2 nodes: " in line
    assert "-m torch.distributed.run --nnodes=2 --nproc_per_node=1 " in line
    assert f"--entry ddp.py:train, then compare: orchestrator-fsm diff {original}" in line
    assert result.stdout == ""
    assert run_dirs(ddp_project / "outputs") == [original]


@pytest.mark.slow
def test_the_tasks_of_a_slurm_job_are_refused_in_one_line(project: Path) -> None:
    tasks = []
    for task in range(2):
        variables = launcher_free_env() | {
            "SLURM_JOB_ID": "4711",
            "SLURM_STEP_ID": "0",
            "SLURM_PROCID": str(task),
            "SLURM_LOCALID": str(task),
            "SLURM_NODEID": "0",
            "SLURM_NTASKS": "2",
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_STEP_NUM_NODES": "1",
            "SLURM_STEP_TASKS_PER_NODE": "2",
            "SLURM_JOB_NUM_NODES": "1",
        }
        tasks.append(
            subprocess.Popen(
                cli_command("run", "recipe.yaml", "--entry", "pipe.py:steady"),
                cwd=project,
                env=variables,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    finished(*tasks)
    (original,) = run_dirs(project / "outputs")
    result = cli("rerun", str(original), "--set", "training.lr=0.5", cwd=project)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        f"error: cannot rerun {original}: its 2 ranks ran as the tasks of SLURM job 4711"
    ), line
    assert (
        "in a SLURM allocation of one node: srun --nodes=1 --ntasks=2 --ntasks-per-node=2 " in line
    )
    assert "--entry pipe.py:steady --set=training.lr=0.5, then compare" in line
    assert run_dirs(project / "outputs") == [original]


def test_a_relaunch_runs_torchrun_from_this_interpreter_and_recreates_its_threads() -> None:
    from orchestrator_fsm.reproduce.relaunch import Relaunch

    one, two = Relaunch(), Relaunch(world_size=2)
    assert one.command("py", ["run", "c.yaml"]) == ["py", "-m", "orchestrator_fsm", "run", "c.yaml"]
    assert two.command("py", ["run", "c.yaml"]) == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=2",
        "-m",
        "orchestrator_fsm",
        "run",
        "c.yaml",
    ]
    assert two.launcher_environment({}) == {"OMP_NUM_THREADS": "1"}
    assert two.launcher_environment({"OMP_NUM_THREADS": "3"}) == {}
    assert one.launcher_environment({}) == {}


@pytest.mark.parametrize(("hosts", "relaunched"), [(("n1", "n1"), True), (("n1", "n2"), False)])
def test_a_bundle_older_than_its_launch_section_is_judged_by_its_ranks_hosts(
    tmp_path: Path, hosts: tuple[str, str], relaunched: bool
) -> None:
    from orchestrator_fsm.reproduce.relaunch import Relaunch, RelaunchRefused, plan_relaunch

    # What a 2-rank run recorded before bundles had a `launch` section: the seeds' world
    # size, and each rank's host in its record.
    (tmp_path / "ranks").mkdir()
    (tmp_path / "run.json").write_text(json.dumps({"rank": 0, "world_size": 2, "host": hosts[0]}))
    (tmp_path / "ranks" / "rank1.json").write_text(
        json.dumps({"rank": 1, "world_size": 2, "host": hosts[1]})
    )
    bundle = {"seeds": {"world_size": 2}, "command": {"python_executable": "py"}}
    if relaunched:
        assert plan_relaunch(tmp_path, bundle, ["run", "c.yaml"]) == Relaunch(world_size=2)
        return
    with pytest.raises(RelaunchRefused) as refused:
        plan_relaunch(tmp_path, bundle, ["run", "c.yaml"])
    assert "its 2 ranks ran by a launcher its bundle does not record on 2 nodes (n1, n2)" in str(
        refused.value
    )
