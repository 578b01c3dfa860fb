"""Sweeps: bare overrides, ``run --multirun`` over every combination, the sweep record."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli, cli_command, minimal_recipe, wait_for

from orchestrator_fsm.sweep import expand_sweep, split_values

ENTRIES = """
import time
from pathlib import Path


def scored(orch):
    seed = orch.cfg.training.seed
    orch.log_metrics({"loss": 1.0 / (seed + 1)}, step=1)
    orch.log_summary({"score": float(seed)})
    if seed == 2:
        raise RuntimeError("seed 2 is unlucky")


def together(orch):
    # Completes only once the other member has started too: both ran at the same time.
    marks = Path(orch.cfg.pipeline["marks"]["dir"])
    (marks / f"started-{orch.cfg.training.seed}").write_text("", encoding="utf-8")
    deadline = time.monotonic() + 120
    while len(list(marks.glob("started-*"))) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("the other member never started")
        time.sleep(0.05)


def waiting(orch):
    marks = Path(orch.cfg.pipeline["marks"]["dir"])
    (marks / f"started-{orch.cfg.training.seed}").write_text("", encoding="utf-8")
    while True:
        time.sleep(0.05)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A recipe (lock off, so that members may run at once) and the entries beside it."""
    marks = tmp_path / "marks"
    marks.mkdir()
    data = minimal_recipe(tmp_path, telemetry={"heartbeat_s": 0})
    data["infrastructure"] = {"lock": {"enabled": False}}
    data["marks"] = {"dir": str(marks)}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    (tmp_path / "entries.py").write_text(ENTRIES, encoding="utf-8")
    return tmp_path


def run_argv(project: Path, function: str, *arguments: str) -> list[str]:
    """``run RECIPE --entry ENTRIES:FUNCTION ARGUMENTS`` of the project."""
    entry = f"{project / 'entries.py'}:{function}"
    return ["run", str(project / "recipe.yaml"), "--entry", entry, *arguments]


def run_project(project: Path, function: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return cli(*run_argv(project, function, *arguments), cwd=project, timeout_s=600)


def runs(project: Path) -> list[Path]:
    outputs = project / "outputs"
    return sorted(p for p in outputs.iterdir() if (p / "run.json").is_file())


def sweep_record(project: Path) -> dict[str, Any]:
    [path] = (project / "outputs" / "sweeps").glob("*/sweep.json")
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return record


def run_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / "run.json").read_text(encoding="utf-8"))
    return data


def test_comma_values_and_ranges_expand_to_every_combination() -> None:
    members = expand_sweep(["a=1,2", "b=range(3)", "c=x"])

    assert members == [
        ["a=1", "b=0", "c=x"],
        ["a=1", "b=1", "c=x"],
        ["a=1", "b=2", "c=x"],
        ["a=2", "b=0", "c=x"],
        ["a=2", "b=1", "c=x"],
        ["a=2", "b=2", "c=x"],
    ]
    assert split_values("range(1, 7, 2)") == ["1", "3", "5"]


def test_commas_inside_brackets_and_quotes_do_not_split_a_value() -> None:
    assert split_values("[1,2],{a: 1, b: 2}") == ["[1,2]", "{a: 1, b: 2}"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]


@pytest.mark.parametrize("override", ["a=1,,2", "a=range(3,3)", "a=range(1,4,0)", "=1", "a"])
def test_malformed_sweeps_are_errors_naming_the_override(override: str) -> None:
    with pytest.raises(ValueError, match="override"):
        expand_sweep([override])


def test_a_bare_override_after_the_recipe_sets_the_value(project: Path) -> None:
    done = run_project(project, "scored", "training.seed=7", "--debug", "telemetry.log_level=DEBUG")

    assert done.returncode == 0, done.stderr
    [run] = runs(project)
    config = yaml.safe_load((run / "reports" / "config.yaml").read_text(encoding="utf-8"))
    assert config["training"]["seed"] == 7
    assert config["telemetry"]["log_level"] == "DEBUG"
    assert run_json(run)["sweep"] is None


@pytest.mark.slow
def test_multirun_runs_every_member_a_failing_one_does_not_stop_the_others(
    project: Path,
) -> None:
    done = run_project(project, "scored", "--multirun", "training.seed=range(1,4)")

    assert done.returncode == 1, done.stderr
    record = sweep_record(project)
    assert record["status"] == "failed"
    members = record["members"]
    assert [m["overrides"] for m in members] == [
        ["training.seed=1"],
        ["training.seed=2"],
        ["training.seed=3"],
    ]
    assert [m["status"] for m in members] == ["completed", "failed", "completed"]
    assert [m["summary"] for m in members] == [{"score": 1.0}, {"score": 2.0}, {"score": 3.0}]
    # Each member is its own run directory, naming its sweep and its number in it.
    found = {run_json(run)["sweep_member"]: run_json(run) for run in runs(project)}
    assert sorted(found) == [1, 2, 3]
    for number, data in found.items():
        assert data["sweep"] == record["sweep"]
        assert data["run_id"] == members[number - 1]["run_id"]
        assert data["config_hash"]
    assert found[2]["status"] == "failed"
    # One summary table at the end: member, overrides, status, duration, metrics.
    table = done.stdout[done.stdout.index(f"sweep {record['sweep']}: failed") :]
    for number, status, score in ((1, "completed", 1), (2, "failed", 2), (3, "completed", 3)):
        row = next(line for line in table.splitlines() if f"training.seed={number} " in line)
        assert status in row and f"score={score}" in row, row
    assert done.stdout.rstrip().splitlines()[-1] == "status: failed"
    assert (
        "seed 2 is unlucky"
        in (project / "outputs" / "sweeps" / record["sweep"] / members[1]["log"]).read_text()
    )


@pytest.mark.slow
def test_fail_fast_starts_no_member_after_a_failure(project: Path) -> None:
    done = run_project(project, "scored", "-m", "--fail-fast", "training.seed=2,1")

    assert done.returncode == 1, done.stderr
    assert [m["status"] for m in sweep_record(project)["members"]] == ["failed", "skipped"]
    assert len(runs(project)) == 1


@pytest.mark.slow
def test_members_run_at_once_with_jobs(project: Path) -> None:
    done = run_project(project, "together", "--multirun", "-j", "2", "training.seed=1,2")

    assert done.returncode == 0, done.stdout + done.stderr
    assert [m["status"] for m in sweep_record(project)["members"]] == ["completed"] * 2
    assert sorted(p.name for p in (project / "marks").iterdir()) == ["started-1", "started-2"]


def test_an_invalid_member_stops_the_sweep_before_anything_runs(project: Path) -> None:
    done = run_project(project, "scored", "--multirun", "training.seed=1,-1")

    assert done.returncode == 2
    assert "training.seed: expected an integer in [0, 2**32), got -1" in done.stderr
    assert "command line" in done.stderr
    assert not (project / "outputs").exists()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_interrupts_the_running_members_and_starts_no_more(project: Path) -> None:
    proc = subprocess.Popen(
        cli_command(*run_argv(project, "waiting", "--multirun", "-j", "2", "training.seed=1,2,3")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: sorted((project / "marks").glob("started-*"))[1:], proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    record = sweep_record(project)
    assert record["status"] == "interrupted"
    assert [m["status"] for m in record["members"]] == ["interrupted", "interrupted", "not started"]
    assert sorted(run_json(run)["status"] for run in runs(project)) == ["interrupted"] * 2


def test_a_swept_value_without_multirun_suggests_it(project: Path) -> None:
    done = run_project(project, "scored", "training.seed=1,2")

    assert done.returncode == 2
    assert "training.seed: expected an integer in [0, 2**32), got '1,2'" in done.stderr
    assert "add --multirun" in done.stderr
    assert not (project / "outputs").exists()


@pytest.mark.slow
def test_inspect_names_the_sweep_of_a_member(project: Path) -> None:
    assert run_project(project, "scored", "-m", "training.seed=3").returncode == 0
    [run] = runs(project)
    sweep = sweep_record(project)["sweep"]

    shown = cli("inspect", str(run), cwd=project, timeout_s=120)

    assert shown.returncode == 0, shown.stderr
    assert any(
        line.split() == ["│", "sweep", "│", sweep, "(member", "1)", "│"]
        for line in shown.stdout.splitlines()
    ), shown.stdout
