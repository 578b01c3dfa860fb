"""A user's script as it is: ``run --script`` runs it as ``__main__`` with its own argv,
``current_run()`` reaches the live run from anywhere, a recipe names its entry, a recipe
without one is refused rather than trained by the demo, and a run made from Python
records its script so that ``rerun`` repeats it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli, isolated, minimal_recipe, only_run_dir, run_dirs

from orchestrator_fsm import current_run
from orchestrator_fsm.errors import LifecycleError
from orchestrator_fsm.layout import METRICS_FILE, bundle_file
from orchestrator_fsm.orchestrator import RootOrchestrator

SCRIPT = """\
import sys

import helper  # a module beside the script
from orchestrator_fsm import current_run

print("argv", sys.argv[1:], "name", __name__)


def log(value):
    current_run().log_metrics({"value": value}, step=1)


if __name__ == "__main__":
    log(helper.VALUE * len(sys.argv))
    if "--fail" in sys.argv:
        sys.exit(3)
    if "--quit" in sys.argv:
        sys.exit(0)
"""


def write_script(folder: Path, value: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "helper.py").write_text(f"VALUE = {value}\n", encoding="utf-8")
    script = folder / "train.py"
    script.write_text(SCRIPT, encoding="utf-8")
    return script


def metric_values(run: Path) -> list[float]:
    lines = (run / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["value"] for line in lines]


def test_run_script_runs_it_as_main_with_its_own_argv(tmp_path: Path) -> None:
    script = write_script(tmp_path / "code")
    result = cli(
        "run", "--script", str(script), *isolated(tmp_path), "--", "-x", "--set", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "argv ['-x', '--set'] name __main__" in result.stdout
    assert f"script: {script} -x --set" in result.stdout
    run = only_run_dir(tmp_path / "outputs")
    assert metric_values(run) == [6]  # helper.VALUE 2 times three words of argv
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert (record["status"], record["entry"]) == ("completed", str(script))
    entry = json.loads(bundle_file(run).read_text(encoding="utf-8"))["entry"]
    assert (entry["kind"], entry["argv"]) == ("script", ["-x", "--set"])
    assert (run / entry["saved"]).read_text(encoding="utf-8") == SCRIPT


@pytest.mark.slow
def test_a_script_that_exits_with_a_failure_status_fails_the_run(tmp_path: Path) -> None:
    script = write_script(tmp_path)
    failed = cli("run", "--script", str(script), *isolated(tmp_path), "--", "--fail", cwd=tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "train.py exited with status 3" in failed.stderr
    quit_ = cli("run", "--script", str(script), *isolated(tmp_path), "--", "--quit", cwd=tmp_path)
    assert quit_.returncode == 0, quit_.stdout + quit_.stderr
    statuses = [
        json.loads((run / "run.json").read_text(encoding="utf-8"))["status"]
        for run in run_dirs(tmp_path / "outputs")
    ]
    assert sorted(statuses) == ["completed", "failed"]


def test_a_recipe_names_its_script_so_run_needs_no_flag(tmp_path: Path) -> None:
    write_script(tmp_path / "project")
    recipe = minimal_recipe(tmp_path)
    recipe["entry"] = "train.py"  # beside the recipe, wherever run is started from
    path = tmp_path / "project" / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cli("run", str(path), "--", "a", cwd=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "argv ['a'] name __main__" in result.stdout
    assert metric_values(only_run_dir(tmp_path / "outputs")) == [4]


def test_a_recipe_without_an_entry_is_refused_not_trained_by_the_demo(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(minimal_recipe(tmp_path)), encoding="utf-8")
    result = cli("run", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path} names no entry: add `entry: path/to/train.py`")
    assert "--entry orchestrator_fsm.demo.pipeline:train" in lines[0]
    assert run_dirs(tmp_path / "outputs") == []


def test_a_bad_entry_in_the_recipe_is_a_config_error_at_its_key(tmp_path: Path) -> None:
    recipe = minimal_recipe(tmp_path)
    recipe["entry"] = "train"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    result = cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{path}: entry: expected a script path/to/train.py" in result.stderr


def test_arguments_after_the_double_dash_belong_to_a_script(tmp_path: Path) -> None:
    result = cli(
        "run",
        "--entry",
        "orchestrator_fsm.demo.pipeline:train",
        *isolated(tmp_path),
        "--",
        "x",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "the arguments after `--` are a script's" in result.stderr


def test_current_run_outside_a_run_is_one_clear_error() -> None:
    with pytest.raises(LifecycleError, match="no run is live in this process"):
        current_run()


def test_current_run_is_the_live_orchestrator_until_its_cleanup(
    make_config: Callable[..., Any],
) -> None:
    cfg = make_config()
    with RootOrchestrator(cfg) as orch:
        assert current_run() is orch
    with pytest.raises(LifecycleError):
        current_run()


@pytest.mark.slow
def test_a_run_made_from_a_python_script_is_rerun_by_running_that_script(
    tmp_path: Path,
) -> None:
    recipe = minimal_recipe(tmp_path)
    script = tmp_path / "made_by_python.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            import sys
            from orchestrator_fsm import Config, RootOrchestrator, current_run

            cfg = Config.from_dict({recipe!r})
            with RootOrchestrator(cfg):
                current_run().log_metrics({{"value": float(sys.argv[1])}}, step=1)
            """
        ),
        encoding="utf-8",
    )
    made = subprocess.run(
        [sys.executable, str(script), "5"], cwd=tmp_path, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    original = only_run_dir(tmp_path / "outputs")
    entry = json.loads(bundle_file(original).read_text(encoding="utf-8"))["entry"]
    assert (entry["kind"], entry["path"], entry["argv"]) == ("python", str(script), ["5"])
    rerun = cli("rerun", str(original), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "identical" in rerun.stdout
    again = [run for run in run_dirs(tmp_path / "outputs") if run != original]
    assert len(again) == 1
    record = json.loads((again[0] / "run.json").read_text(encoding="utf-8"))
    assert record["rerun_of"] == str(original)
    assert metric_values(again[0]) == [5.0]


@pytest.mark.slow
def test_a_sweep_runs_the_script_in_every_member_with_its_arguments(tmp_path: Path) -> None:
    script = write_script(tmp_path / "code")
    result = cli(
        "run",
        "--script",
        str(script),
        *isolated(tmp_path),
        "--multirun",
        "training.seed=1,2",
        "--",
        "a",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    runs = [run for run in run_dirs(tmp_path / "outputs") if run.name != "sweeps"]
    assert [metric_values(run) for run in runs] == [[4], [4]]
