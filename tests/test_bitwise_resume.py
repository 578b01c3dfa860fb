"""A reproducible run of the bundled demo, stopped and resumed once or more, ends with
the metrics and final weights of the same run uninterrupted, bit for bit: SIGTERM
mid-epoch then ``run --resume``, SIGKILL then ``run --resume``, both one after the
other, a torchrun ``--max-restarts`` restart after a rank is killed, and a real SLURM
``scontrol requeue`` of the README's job script; and ``examples/ddp_train.py`` restarted
by torchrun after a rank is killed. Each is checked with the project's
own ``orchestrator-fsm diff`` (the metrics streams, the final values and every file
under ``checkpoints/``, tensor for tensor) and by loading the final weights.

Not compared, as everywhere: durations (``epoch_seconds``, the ``seconds`` column of
``metrics.csv``), which no two runs share.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import cli, cli_command, minimal_recipe, only_run_dir, write_recipe

from orchestrator_fsm.demo import DEMO_ENTRY
from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS
from orchestrator_fsm.lifecycle.record import read_run

sys.path.insert(0, str(Path(__file__).with_name("slurm")))
from slurm_helpers import (
    TERMINAL,
    first_attempt_closed,
    job_env,
    job_info,
    job_output,
    readme_job_script,
    requeued_then_released,
    sbatch,
    scontrol,
    slurm_cluster,
    slurm_dir,
    wait_job,
    wait_until,
)

# Its reference runs are module-scoped, and one test needs the SLURM cluster, whose tests
# share one xdist worker: the whole module runs on that worker, so each reference run is
# made once (tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]

REPO = Path(__file__).resolve().parents[1]

# The demo at a size where an epoch is 48 batches (a poll of the test lands inside
# one) and the whole run a few seconds. One loader worker asked for, as on this 2-core
# machine by default; a reproducible recipe takes none (see hardware.num_workers).
ONE_PROCESS: dict[str, Any] = {
    "dataset": {"name": "synthetic_shapes", "num_samples": 2048},
    "architecture": {"name": "mini_cnn", "channels": 4},
    "training": {"seed": 7, "epochs": 4, "batch_size": 32},
    "hardware": {"device": "cpu", "cpu_threads": 1, "reproducible": True, "num_workers": 1},
}
# Two ranks share 2 CPUs: smaller, no loader workers.
TWO_RANKS: dict[str, Any] = {
    **ONE_PROCESS,
    "dataset": {"name": "synthetic_shapes", "num_samples": 1024},
    "training": {"seed": 7, "epochs": 3, "batch_size": 32},
    "hardware": {"device": "cpu", "cpu_threads": 1, "reproducible": True, "num_workers": 0},
}


def demo_recipe(directory: Path, sections: dict[str, Any]) -> Path:
    """``directory/recipe.yaml``: the demo with ``sections``, writing under
    ``directory``; a 120 s join timeout, no heartbeat."""
    directory.mkdir(parents=True, exist_ok=True)
    recipe = minimal_recipe(directory, **sections)
    recipe["infrastructure"]["join_timeout_s"] = 120
    recipe["telemetry"]["heartbeat_s"] = 0
    recipe["entry"] = DEMO_ENTRY
    return write_recipe(directory, recipe)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without an enclosing launcher's variables, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV_VARS}
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    return {**env, "OMP_NUM_THREADS": "1", "COLUMNS": "250", **extra}


def start(recipe: Path, *argv: str) -> subprocess.Popen[str]:
    """``orchestrator-fsm run RECIPE ARGV`` (the demo) started in ``recipe``'s folder."""
    return subprocess.Popen(
        cli_command("run", str(recipe), *argv),
        cwd=recipe.parent,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def checkpoints(run_root: Path) -> list[str]:
    """The names of the run's checkpoints (``ckpt-*``) in any run directory under
    ``run_root``."""
    return sorted(p.name for p in run_root.glob("*/checkpoints/ckpt-*.pt"))


def until(found: Callable[[], Any], proc: subprocess.Popen[str], what: str) -> Any:
    """``found()`` once truthy, asked every 5 ms (a demo step takes longer); fails when
    ``proc`` ends first or after 120 s."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"ended ({proc.returncode}) before {what}:\n{proc.communicate()[0]}")
        time.sleep(0.005)
    pytest.fail(f"waited 120 s for {what}")


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def resume(recipe: Path, run_dir: Path) -> str:
    """``orchestrator-fsm run RECIPE --resume RUN_DIR`` to its end; its output. Fails
    unless it completes."""
    result = cli("run", str(recipe), "--resume", str(run_dir), cwd=recipe.parent, env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def resumed_from(run_dir: Path) -> list[str]:
    """What each resumed attempt's log says it loaded: ``(step N: epoch E, B batches
    done)``."""
    log = (run_dir / "logs" / "run.log").read_text(encoding="utf-8")
    return re.findall(r"demo: resuming from \S+ \((step \d+: epoch \d+, \d+ batch\w* done)\)", log)


def demo_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The demo's final model: ``checkpoints/last.pt``'s ``model_state``."""
    state: dict[str, torch.Tensor] = torch.load(
        run_dir / "checkpoints" / "last.pt", weights_only=True
    )["model_state"]
    return state


def assert_bitwise(
    reference: Path,
    resumed: Path,
    weights: Callable[[Path], dict[str, torch.Tensor]] = demo_weights,
) -> dict[str, Any]:
    """``orchestrator-fsm diff REFERENCE RESUMED``: metrics identical, no final value
    apart, every checkpoint file equal or holding the same tensors; and the final
    ``weights`` equal bit for bit. Returns the diff."""
    result = cli("diff", str(reference), str(resumed), "--json", cwd=resumed, env=clean_env())
    diff = json.loads(result.stdout)
    # The two runs live in folders of their own (the recipe's output and lock paths,
    # and where the recipe, the entry and its arguments are), so diff says they differ
    # (exit 1); of the config, in those two keys only.
    assert result.returncode == 1, result.stderr
    differing = {d["key"] for d in diff["differences"] if d["kind"] == "config"}
    assert differing == {"telemetry.output_dir", "infrastructure.lock.path"}, differing
    assert diff["metrics"]["status"] == "identical", diff["metrics"]
    assert diff["final"] == {}
    files = diff["metrics"]["checkpoints"]
    assert any(name.startswith("ckpt-") for name in files), files
    assert set(files.values()) <= {"equal", "same tensors"}, files
    assert [d for d in diff["differences"] if d["kind"] == "seeds"] == []
    first, second = weights(reference), weights(resumed)
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name
    return diff


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run of :data:`ONE_PROCESS`, uninterrupted."""
    recipe = demo_recipe(tmp_path_factory.mktemp("reference"), ONE_PROCESS)
    result = cli("run", str(recipe), cwd=recipe.parent, env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    return only_run_dir(recipe.parent / "outputs")


def cpu_ticks(pid: int) -> int:
    """The CPU time ``pid`` has used, in clock ticks (``utime + stime``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def stop_with_sigterm(proc: subprocess.Popen[str], outputs: Path, after: list[str]) -> None:
    """SIGTERM ``proc`` inside the epoch after the one whose checkpoint (other than
    ``after``) it saves: once it has used two clock ticks of CPU more (a few of the
    epoch's 48 batches: CPU, not wall time, so a loaded machine changes nothing), frozen
    (SIGSTOP) so that it does not run on while the test signals, then SIGTERM and
    SIGCONT."""
    until(lambda: set(checkpoints(outputs)) - set(after), proc, "a new checkpoint")
    saved = cpu_ticks(proc.pid)
    until(lambda: cpu_ticks(proc.pid) >= saved + 2, proc, "some batches of the next epoch")
    os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)


def test_sigterm_mid_epoch_then_resume_ends_bitwise_as_uninterrupted(
    tmp_path: Path, reference: Path
) -> None:
    recipe = demo_recipe(tmp_path, ONE_PROCESS)
    proc = start(recipe)
    stop_with_sigterm(proc, tmp_path / "outputs", [])
    code, out = finish(proc)
    assert code == 128 + signal.SIGTERM, out
    run_dir = only_run_dir(tmp_path / "outputs")
    first = read_run(run_dir)
    assert first.status == "interrupted", out
    assert first.interruption is not None and first.interruption.signal == "SIGTERM"
    # The demo saved where the stop landed, mid-epoch, and returned.
    assert re.search(r"demo: stopped at step \d+ \(epoch 2, batch [1-9]\d*\)", out), out

    resume(recipe, run_dir)
    record = read_run(run_dir)
    assert [(a.number, a.status) for a in record.attempts] == [
        (1, "interrupted"),
        (2, "completed"),
    ]
    assert len(resumed_from(run_dir)) == 1
    assert_bitwise(reference, run_dir)


def test_sigkill_then_resume_ends_bitwise_as_uninterrupted(tmp_path: Path, reference: Path) -> None:
    recipe = demo_recipe(tmp_path, ONE_PROCESS)
    proc = start(recipe)
    until(lambda: checkpoints(tmp_path / "outputs"), proc, "the first epoch's checkpoint")
    proc.kill()
    code, out = finish(proc)
    assert code == -signal.SIGKILL, out
    run_dir = only_run_dir(tmp_path / "outputs")

    resume(recipe, run_dir)
    record = read_run(run_dir)
    # Attempt 1 vanished without a word: the next one found its process gone.
    assert [a.number for a in record.attempts] == [1, 2]
    assert record.attempts[0].status == "crashed"
    assert record.status == "completed"
    # No stop saved anything: the last epoch's checkpoint is where it went on.
    (loaded,) = resumed_from(run_dir)
    assert loaded.endswith(", 0 batches done")
    assert_bitwise(reference, run_dir)


def test_stopped_twice_sigterm_then_sigkill_ends_bitwise_as_uninterrupted(
    tmp_path: Path, reference: Path
) -> None:
    recipe = demo_recipe(tmp_path, ONE_PROCESS)
    outputs = tmp_path / "outputs"
    proc = start(recipe)
    stop_with_sigterm(proc, outputs, [])
    code, out = finish(proc)
    assert code == 128 + signal.SIGTERM, out
    run_dir = only_run_dir(outputs)

    saved = checkpoints(outputs)
    second = start(recipe, "--resume", str(run_dir))
    until(lambda: set(checkpoints(outputs)) - set(saved), second, "attempt 2's first checkpoint")
    second.kill()
    assert finish(second)[0] == -signal.SIGKILL

    resume(recipe, run_dir)
    record = read_run(run_dir)
    assert [(a.number, a.status) for a in record.attempts] == [
        (1, "interrupted"),
        (2, "crashed"),
        (3, "completed"),
    ]
    assert len(resumed_from(run_dir)) == 2
    assert_bitwise(reference, run_dir)


# -- several ranks -------------------------------------------------------------------


def torchrun(
    recipe: Path, *options: str, target: tuple[str, ...] = (), **extra_env: str
) -> subprocess.Popen[str]:
    """``torchrun --standalone --nproc_per_node=2 OPTIONS TARGET``; TARGET: the demo on
    ``recipe`` unless given."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "--monitor-interval=0.2", *options]
    target = target or ("-m", "orchestrator_fsm", "run", str(recipe))
    return subprocess.Popen(
        [*command, *target],
        cwd=recipe.parent,
        env=clean_env(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def two_rank_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run of :data:`TWO_RANKS` under torchrun, uninterrupted."""
    recipe = demo_recipe(tmp_path_factory.mktemp("two_ranks"), TWO_RANKS)
    code, out = finish(torchrun(recipe))
    assert code == 0, out
    return only_run_dir(recipe.parent / "outputs")


def worker_of_rank(agent: int, rank: int) -> int | None:
    """The pid of torchrun ``agent``'s worker of ``rank`` in its first round."""
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        first_round = b"TORCHELASTIC_RESTART_COUNT=0" in environ
        if parent == agent and f"RANK={rank}".encode() in environ and first_round:
            return int(proc.name)
    return None


def test_a_killed_rank_restarted_by_torchrun_ends_bitwise_as_uninterrupted(
    tmp_path: Path, two_rank_reference: Path
) -> None:
    """Rank 1 SIGKILLed after the first epoch's checkpoints; torchrun restarts both
    ranks as attempt 2. ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: without it torchrun
    (2.13) hands the restarted workers the store of the first round, whose keys still
    hold the dead workers' addresses, and the restarted process group fails to connect
    (``Gloo connectFullMesh failed ... Connection refused``; pytorch/pytorch#135712)."""
    recipe = demo_recipe(tmp_path, TWO_RANKS)
    agent = torchrun(recipe, "--max-restarts=1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    until(lambda: checkpoints(tmp_path / "outputs"), agent, "the first epoch's checkpoints")
    victim = until(lambda: worker_of_rank(agent.pid, 1), agent, "rank 1's worker")
    os.kill(victim, signal.SIGKILL)
    code, out = finish(agent)
    assert code == 0, out
    run_dir = only_run_dir(tmp_path / "outputs")
    record = read_run(run_dir)
    assert [a.number for a in record.attempts] == [1, 2], out
    assert record.attempts[1].restart_count == 1
    assert record.effective_status == "completed"
    # Each rank went back to its own checkpoint of the last step both had saved.
    assert len(resumed_from(run_dir)) == 1
    rank1_log = (run_dir / "logs" / "rank1.log").read_text(encoding="utf-8")
    assert "demo: resuming from ckpt-" in rank1_log
    assert_bitwise(two_rank_reference, run_dir)


# -- a real SLURM ------------------------------------------------------------------------

__all__ = ["slurm_cluster", "slurm_dir"]  # the fixtures, used by name


def test_a_slurm_requeue_of_the_readme_job_ends_bitwise_as_uninterrupted(
    slurm_dir: Path, two_rank_reference: Path
) -> None:
    """The README's job script (``srun orchestrator-fsm run recipe.yaml --entry
    train.py:main``, the demo, two tasks), ``scontrol requeue``d once the first epoch's
    checkpoints are saved: SIGTERM reaches both ranks, they agree on a batch to stop
    at, save there and leave (attempt 1 ``preempted``); the requeued job is attempt 2
    of the same run, goes on from those checkpoints and completes bitwise as the
    uninterrupted two-rank run."""
    demo_recipe(slurm_dir, TWO_RANKS)
    (slurm_dir / "train.py").write_text(
        "from orchestrator_fsm.demo.pipeline import train as main\n", encoding="utf-8"
    )
    job = sbatch(
        readme_job_script("PreemptTime"),
        *("-n", "2"),
        cwd=slurm_dir,
        env=job_env(slurm_dir),
    )
    outputs = slurm_dir / "outputs"
    wait_until(
        "the first epoch's checkpoints",
        lambda: len(checkpoints(outputs)) == 2 or job_info(job).get("JobState") in TERMINAL,
        240,
        poll_s=0.01,
    )
    assert len(checkpoints(outputs)) == 2, job_output(slurm_dir)
    scontrol("requeue", job)
    run_dir = only_run_dir(outputs)
    first = first_attempt_closed(run_dir, timeout_s=60)
    assert first.status == "preempted", job_output(slurm_dir)
    requeued_then_released(job)
    info = wait_job(job, timeout_s=300)
    assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), job_output(slurm_dir)

    assert only_run_dir(outputs) == run_dir
    record = read_run(run_dir)
    assert [a.number for a in record.attempts] == [1, 2]
    assert record.effective_status == "completed", job_output(slurm_dir)
    assert len(resumed_from(run_dir)) == 1, job_output(slurm_dir)
    assert_bitwise(two_rank_reference, run_dir)


# -- examples/ddp_train.py ---------------------------------------------------------------


def ddp_example(directory: Path) -> tuple[str, ...]:
    """``examples/ddp_train.py`` on its recipe, small, writing under ``directory``."""
    overrides = {
        "telemetry.output_dir": directory / "outputs",
        "infrastructure.lock.path": directory / "x.lock",
        "infrastructure.join_timeout_s": 120,
        "hardware.device": "cpu",
        "hardware.reproducible": "true",
        "training.epochs": 3,
        "dataset.num_samples": 1024,
    }
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    recipe = REPO / "examples" / "recipes" / "mini_cnn.yaml"
    return (str(REPO / "examples" / "ddp_train.py"), str(recipe), *sets)


def example_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The example's final model: its latest checkpoint's ``state.model``."""
    latest = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))[-1]
    state: dict[str, torch.Tensor] = torch.load(latest, weights_only=True)["state"]["model"]
    return state


def test_the_ddp_example_restarted_by_torchrun_ends_bitwise_as_uninterrupted(
    tmp_path: Path,
) -> None:
    """``examples/ddp_train.py``, rank 1 SIGKILLed after the first epoch's checkpoint,
    torchrun restarting both ranks: the same checkpoints and final weights as the
    example run through."""
    reference = tmp_path / "reference"
    reference.mkdir()
    code, out = finish(torchrun(reference, target=ddp_example(reference)))
    assert code == 0, out

    restarted = tmp_path / "restarted"
    restarted.mkdir()
    agent = torchrun(
        restarted,
        "--max-restarts=1",
        target=ddp_example(restarted),
        TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
    )
    until(lambda: checkpoints(restarted / "outputs"), agent, "the first epoch's checkpoint")
    victim = until(lambda: worker_of_rank(agent.pid, 1), agent, "rank 1's worker")
    os.kill(victim, signal.SIGKILL)
    code, out = finish(agent)
    assert code == 0, out
    assert "2 ranks; final training accuracy: " in out
    run_dir = only_run_dir(restarted / "outputs")
    record = read_run(run_dir)
    assert [a.number for a in record.attempts] == [1, 2], out
    assert record.effective_status == "completed"
    assert "resuming after epoch" in (run_dir / "logs" / "run.log").read_text(encoding="utf-8")
    assert_bitwise(only_run_dir(reference / "outputs"), run_dir, example_weights)
