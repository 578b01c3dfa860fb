"""Reproducible runs as programs use them: DataLoader workers kept and seeded from the
seed tree, the program's own re-seeding or flag switching recorded, the hash seed in force."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import cli, run_dirs, write_recipe

LOADER_ENTRY = """
import hashlib, os, random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class Augmented(Dataset):
    # Every item draws from the three generators a worker holds.
    def __len__(self):
        return 64

    def __getitem__(self, index):
        noise = torch.rand(3) + float(np.random.rand()) + random.random()
        return index, noise, os.getpid()


def main(orch):
    loader = DataLoader(
        Augmented(), batch_size=4, shuffle=True, num_workers=orch.num_workers,
        **orch.loader_seeding("train_loader"),
    )
    digest = hashlib.sha256()
    pids = set()
    for _ in range(2):  # two epochs: a new order and new worker seeds each
        for index, noise, pid in loader:
            digest.update(index.numpy().tobytes())
            digest.update(noise.numpy().tobytes())
            pids.update(pid.tolist())
    (orch.paths.root / "batches.txt").write_text(
        f"{digest.hexdigest()} workers={orch.num_workers} "
        f"in_workers={os.getpid() not in pids}"
    )
"""


@pytest.mark.slow
def test_two_reproducible_runs_with_two_shuffling_workers_are_bitwise_identical(
    tmp_path: Path,
) -> None:
    recipe = write_recipe(tmp_path, hardware={"reproducible": True, "num_workers": 2})
    entry = tmp_path / "loader_entry.py"
    entry.write_text(LOADER_ENTRY, encoding="utf-8")
    for _ in range(2):
        result = cli("run", str(recipe), "--entry", f"{entry}:main", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    first, second = (run / "batches.txt" for run in run_dirs(tmp_path / "outputs"))
    assert first.read_text().endswith("workers=2 in_workers=True")
    assert first.read_text() == second.read_text()


HASH_ENTRY = """
def main(orch):
    orch.log_environment_report()
    (orch.paths.root / "hash.txt").write_text(str(hash("set order follows this")))
"""


@pytest.mark.slow
def test_the_command_fixes_the_hash_seed_of_a_reproducible_run_itself(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, hardware={"reproducible": True})
    entry = tmp_path / "hash_entry.py"
    entry.write_text(HASH_ENTRY, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    for _ in range(2):
        result = cli("run", str(recipe), "--entry", f"{entry}:main", cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert "PYTHONHASHSEED" not in result.stderr
    first, second = run_dirs(tmp_path / "outputs")
    assert (first / "hash.txt").read_text() == (second / "hash.txt").read_text()
    report = json.loads((first / "reports" / "environment.json").read_text(encoding="utf-8"))
    assert report["determinism"]["python_hash_seed"] == 1234


def test_a_run_that_is_not_reproducible_keeps_randomized_hashing(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    ok = "def main(orch):\n    orch.log_environment_report()\n"
    (tmp_path / "ok.py").write_text(ok, encoding="utf-8")
    result = cli("run", str(recipe), "--entry", "ok.py:main", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    report = json.loads((run / "reports" / "environment.json").read_text(encoding="utf-8"))
    assert report["determinism"]["python_hash_seed"] is None


RESEEDING_ENTRY = """
import torch

def main(orch):
    torch.manual_seed(1337)  # as nanoGPT's train.py does
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.use_deterministic_algorithms(False)
"""


@pytest.mark.slow
def test_the_programs_own_reseeding_and_flag_switching_is_recorded_and_shown(
    tmp_path: Path,
) -> None:
    recipe = write_recipe(tmp_path, hardware={"reproducible": True})
    entry = tmp_path / "reseeding.py"
    entry.write_text(RESEEDING_ENTRY, encoding="utf-8")
    result = cli("run", str(recipe), "--entry", f"{entry}:main", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    changes = record["determinism_changes"]
    assert changes["torch.initial_seed"] == {"applied": 1234, "at_end": 1337}
    assert changes["cuda.matmul.allow_tf32"] == {"applied": False, "at_end": True}
    assert changes["deterministic_algorithms"] == {"applied": True, "at_end": False}
    assert "the program changed during the run: torch.initial_seed 1234 -> 1337" in (
        run / "logs" / "run.log"
    ).read_text(encoding="utf-8")
    shown = cli("inspect", str(run), cwd=tmp_path)
    assert "changed by the program" in shown.stdout
    assert "torch.initial_seed 1234 -> 1337" in shown.stdout


def test_a_run_that_leaves_its_seed_alone_records_no_change(tmp_path: Path) -> None:
    from orchestrator_fsm import Config, RootOrchestrator

    with RootOrchestrator(Config.from_recipe(write_recipe(tmp_path))) as orch:
        pass
    assert orch.record is not None
    assert orch.record.determinism_changes == {}


@pytest.mark.slow
def test_rerun_of_a_reproducible_run_sees_no_drift_in_the_hash_seed_it_set(
    tmp_path: Path,
) -> None:
    recipe = write_recipe(tmp_path, hardware={"reproducible": True})
    entry = tmp_path / "hash_entry.py"
    entry.write_text(HASH_ENTRY, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    result = cli("run", str(recipe), "--entry", f"{entry}:main", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    rerun = cli("rerun", str(run), "--strict", cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "PYTHONHASHSEED" not in rerun.stdout
