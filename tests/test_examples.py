"""Every script in examples/ runs to completion and prints what its docstring promises."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import isolated

from orchestrator_fsm.lifecycle.table import advance_path

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


def only_run_dir(output_dir: Path) -> Path:
    dirs = [p for p in output_dir.iterdir() if p.is_dir()]
    assert len(dirs) == 1, f"expected one run directory, found {dirs}"
    return dirs[0]


def run_status(root: Path) -> str:
    status: str = json.loads((root / "run.json").read_text(encoding="utf-8"))["status"]
    return status


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
    assert run_status(only_run_dir(tmp_path / "outputs")) == "completed"


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


def test_entry_point_script_runs_itself_through_the_cli(tmp_path: Path) -> None:
    out = run_python(tmp_path, str(EXAMPLES / "entry_point.py"), *isolated(tmp_path)).stdout

    root = only_run_dir(tmp_path / "outputs")
    assert (root / "exports" / "summary.json").is_file()
    assert out.rstrip().splitlines()[-1] == "status: completed"
