"""Where a run's files are: one owner for every name, and ``telemetry.output_dir``
normalised once for the run directory, the lock identity, the job index and sweeps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import minimal_recipe

from orchestrator_fsm import RootOrchestrator
from orchestrator_fsm.config import Config
from orchestrator_fsm.layout import (
    RUN_FILE,
    job_entry_file,
    output_root,
    sweep_dir,
)
from orchestrator_fsm.phases.lock import run_identity


def test_output_root_expands_home_and_variables_and_makes_the_path_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNS_ROOT", str(tmp_path / "scratch"))
    monkeypatch.chdir(tmp_path)
    assert output_root("~/runs") == tmp_path / "home" / "runs"
    assert output_root("$RUNS_ROOT/a/../b") == tmp_path / "scratch" / "b"
    assert output_root("outputs") == tmp_path / "outputs"
    assert job_entry_file("~/runs", "42") == tmp_path / "home" / "runs" / ".jobs" / "42.json"
    assert sweep_dir("~/runs", "s1") == tmp_path / "home" / "runs" / "sweeps" / "s1"


def test_a_run_with_output_dir_under_home_lands_there_and_its_lock_identity_agrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    recipe = minimal_recipe(tmp_path, telemetry={"output_dir": "~/x"})
    with RootOrchestrator(Config.from_dict(recipe)) as orch:
        root = orch.paths.root
    assert root.parent == home / "x"
    assert (root / RUN_FILE).is_file()
    assert not (tmp_path / "~").exists()
    spelt_out = minimal_recipe(tmp_path, telemetry={"output_dir": os.fspath(home / "x")})
    assert run_identity(Config.from_dict(recipe)) == run_identity(Config.from_dict(spelt_out))
