"""Every script in examples/ runs to completion and prints what its docstring promises."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import isolated, only_run_dir, run_torchrun

from orchestrator_fsm.config import Config
from orchestrator_fsm.lifecycle.table import LifecycleState, advance_path
from orchestrator_fsm.phases.lock import resolve_lock_path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
RECIPE = EXAMPLES / "recipes" / "mini_cnn.yaml"

# Tiny training and a private lock: the examples' behaviour, in CI time, without touching
# a lock that a developer's own run of the same project may hold.
FAST = ["--set", "training.epochs=1", "--set", "dataset.num_samples=96"]


def run_python(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def example_args(tmp_path: Path) -> list[str]:
    """The examples' own command line: ``--output-dir`` and ``--set`` overrides."""
    lock = ["--set", f"infrastructure.lock.path={tmp_path / 'x.lock'}"]
    return ["--output-dir", str(tmp_path / "outputs"), *lock, *FAST]


def run_status(root: Path) -> str:
    status: str = json.loads((root / "run.json").read_text(encoding="utf-8"))["status"]
    return status


@pytest.mark.slow
def test_quickstart_trains_inside_the_with_block(tmp_path: Path) -> None:
    out = run_python(tmp_path, str(EXAMPLES / "quickstart.py"), *example_args(tmp_path)).stdout

    root = only_run_dir(tmp_path / "outputs")
    assert "state inside the block: ready" in out
    assert "state after the block: cleaned" in out
    assert "final validation accuracy: " in out
    assert f"metrics: {root / 'reports' / 'metrics.csv'}" in out
    assert (root / "checkpoints" / "last.pt").is_file()
    assert run_status(root) == "completed"


def test_step_by_step_prints_every_state_until_the_terminal_one(tmp_path: Path) -> None:
    out = run_python(tmp_path, str(EXAMPLES / "step_by_step.py"), *example_args(tmp_path)).stdout

    transitions = [
        tuple(line.split()[:3:2]) for line in out.splitlines() if " -> " in line and "step" in line
    ]
    path = [state.value for state in advance_path(is_main_process=True)]
    assert path[-1] == "cleaned"
    assert transitions == list(itertools.pairwise(path))
    assert out.rstrip().splitlines()[-1] == f"terminal: cleaned after {len(path) - 1} transitions"
    root = only_run_dir(tmp_path / "outputs")
    assert run_status(root) == "completed"
    # The example no longer starts the timer itself: the first step does.
    assert json.loads((root / "run.json").read_text(encoding="utf-8"))["elapsed_s"] > 0


@pytest.mark.parametrize(
    "recipe", sorted((EXAMPLES / "recipes").glob("*.yaml")), ids=lambda path: path.name
)
def test_an_example_recipes_lock_comments_say_what_its_lock_keeps_apart(
    tmp_path: Path, recipe: Path
) -> None:
    def lock_of(*overrides: str) -> Path:
        cfg = Config.from_recipe(recipe, overrides=[f"telemetry.output_dir={tmp_path}", *overrides])
        return resolve_lock_path(cfg)

    text = recipe.read_text(encoding="utf-8")
    one_per_run = lock_of("training.seed=1") != lock_of("training.seed=2")
    if one_per_run:  # runs of the project go side by side: no comment may say otherwise
        for claim in ("one lock per project", "never overlap (one lock", "run of this project"):
            assert claim not in text, f"{recipe.name} says {claim!r}"


def test_custom_dependencies_are_called_and_consume_no_randomness(tmp_path: Path) -> None:
    script = str(EXAMPLES / "custom_dependencies.py")
    out = run_python(tmp_path, script, *example_args(tmp_path)).stdout

    root = only_run_dir(tmp_path / "outputs")
    assert f"reporter: run {root.name}: synthetic_shapes/mini_cnn on " in out
    assert "seed setter calls: [(42, False, False)]" in out
    assert "reports made: 1" in out
    assert "equal to a bare set_seed(42): True" in out
    # The injected reporter replaced the default one, which writes environment.json.
    assert not (root / "reports" / "environment.json").exists()


@pytest.mark.parametrize("entry", ["examples.entry_point:main", "examples/entry_point.py:main"])
def test_entry_point_runs_under_the_cli_as_module_or_file(tmp_path: Path, entry: str) -> None:
    argv = ["-m", "orchestrator_fsm", "run", str(RECIPE), "--entry", entry]
    out = run_python(tmp_path, *argv, *isolated(tmp_path)).stdout

    root = only_run_dir(tmp_path / "outputs")
    summary = json.loads((root / "exports" / "summary.json").read_text(encoding="utf-8"))
    assert (summary["dataset"], summary["seed"]) == ("synthetic_shapes", 42)
    assert len(summary["sample"]) == 4
    assert out.rstrip().splitlines()[-2:] == [f"run directory: {root}", "status: completed"]


@pytest.mark.slow
def test_entry_point_script_runs_itself_through_the_cli(tmp_path: Path) -> None:
    out = run_python(tmp_path, str(EXAMPLES / "entry_point.py"), *isolated(tmp_path)).stdout

    root = only_run_dir(tmp_path / "outputs")
    assert (root / "exports" / "summary.json").is_file()
    assert out.rstrip().splitlines()[-1] == "status: completed"


def ddp_train(tmp_path: Path, nproc: int) -> tuple[str, str, Path]:
    """``examples/ddp_train.py`` under torchrun with ``nproc`` ranks, trained briefly;
    its stdout, stderr and run directory."""
    overrides = [
        f"telemetry.output_dir={tmp_path / 'outputs'}",
        f"infrastructure.lock.path={tmp_path / 'x.lock'}",
        "hardware.device=cpu",
        "hardware.num_workers=0",
        "training.epochs=2",
        "dataset.num_samples=128",
    ]
    sets = [arg for override in overrides for arg in ("--set", override)]
    script = EXAMPLES / "ddp_train.py"
    out, err = run_torchrun(REPO, script, str(RECIPE), *sets, nproc=nproc)
    return out, err, only_run_dir(tmp_path / "outputs")


@pytest.mark.slow
def test_ddp_train_runs_under_torchrun_as_a_single_rank(tmp_path: Path) -> None:
    out, _, root = ddp_train(tmp_path, nproc=1)

    assert out.splitlines()[-1].startswith("1 rank; final training accuracy: ")
    assert [p.name for p in (root / "checkpoints").iterdir()] == ["model.pt"]
    assert "this rank trains on 128 of the 128 images" in (root / "logs" / "run.log").read_text()
    assert run_status(root) == "completed"


@pytest.mark.slow
@pytest.mark.xfail(
    LifecycleState.LOGGED not in advance_path(is_main_process=False),
    reason="ranks other than 0 get a run logger once they join rank 0's run directory",
    strict=True,
)
def test_ddp_train_with_two_ranks_writes_one_run_with_a_log_per_rank(tmp_path: Path) -> None:
    out, err, root = ddp_train(tmp_path, nproc=2)

    assert out.count("final training accuracy: ") == 1
    assert "2 ranks; final training accuracy: " in out
    assert [p.name for p in (root / "checkpoints").iterdir()] == ["model.pt"]
    logs = root / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["rank1.log", "run.log", "stdout.log"]
    for rank, name in enumerate(["run.log", "rank1.log"]):
        lines = (logs / name).read_text(encoding="utf-8").splitlines()
        assert "this rank trains on 64 of the 128 images" in "\n".join(lines)
        assert all(f"[rank{rank}] " in line for line in lines if line[:4].isdigit())
    assert "[rank1] INFO" not in err  # rank 1's INFO lines stay in its own file
    assert run_status(root) == "completed"
