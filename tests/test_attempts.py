"""Attempt-aware runs: a resumed run knows which attempt it is (``orch.attempt``), its
metrics lines carry their attempt so a step redone after a resume counts once (the
later attempt's), and each attempt's config and rerun bundle are kept."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator_fsm import read_run
from orchestrator_fsm.lifecycle.metrics import effective_lines, last_values
from orchestrator_fsm.lifecycle.record import RunRecord
from orchestrator_fsm.reproduce.compare import IDENTICAL, compare_runs, read_metrics
from tests.conftest import cli, minimal_recipe, only_run_dir, run_dirs, write_recipe

# Attempt 1 fails after step FAIL_AT (its last checkpoint, say, was at step START - 1);
# the next attempt starts again at START, as a resumed loop does.
PIPELINE = textwrap.dedent(
    """
    import json, os

    def main(orch):
        attempt = orch.attempt
        out = orch.paths.root / f"attempt{attempt.number}.json"
        out.write_text(json.dumps({
            "number": attempt.number,
            "restart_count": attempt.restart_count,
            "resumed": attempt.resumed,
            "previous_status": attempt.previous_status,
            "previous_reason": attempt.previous_reason,
        }))
        start = int(os.environ.get("START", "1"))
        fail_at = int(os.environ.get("FAIL_AT", "0"))
        for step in range(start, 5):
            # The first step of the run also scores "acc"; no later attempt redoes it.
            extra = {"acc": 0.5} if step == 1 else {}
            orch.log_metrics({"loss": 1.0 / step, **extra}, step=step)
            if step == fail_at:
                raise RuntimeError("the node went away")
    """
)


def _entry(tmp_path: Path) -> str:
    (tmp_path / "pipeline.py").write_text(PIPELINE, encoding="utf-8")
    return f"{tmp_path / 'pipeline.py'}:main"


def _lines(run: Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    text = (run / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow
def test_a_resumed_run_knows_its_attempt_and_a_redone_step_counts_once(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    straight_dir, broken_dir = tmp_path / "straight", tmp_path / "broken"
    straight_dir.mkdir()
    broken_dir.mkdir()
    straight = cli("run", str(write_recipe(straight_dir)), "--entry", entry, cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    recipe = write_recipe(broken_dir)
    env = {**os.environ, "FAIL_AT": "3"}
    failed = cli("run", str(recipe), "--entry", entry, cwd=tmp_path, env=env)
    assert failed.returncode == 1, failed.stderr
    run = only_run_dir(broken_dir / "outputs")
    first = json.loads((run / "attempt1.json").read_text(encoding="utf-8"))
    assert first == {
        "number": 1,
        "restart_count": 0,
        "resumed": False,
        "previous_status": None,
        "previous_reason": None,
    }

    # The next attempt goes back to step 2 (its checkpoint was at step 1) and redoes it.
    env = {**os.environ, "START": "2"}
    resumed = cli("run", str(recipe), "--entry", entry, "--resume", str(run), cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    second = json.loads((run / "attempt2.json").read_text(encoding="utf-8"))
    assert second["number"] == 2 and second["resumed"] is True
    assert second["restart_count"] == 0
    assert second["previous_status"] == "failed"
    assert "the node went away" in second["previous_reason"]

    lines = _lines(run)
    assert [(line["attempt"], line["step"]) for line in lines] == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 2),
        (2, 3),
        (2, 4),
    ]
    # Steps 2 and 3 appear twice; the results are the later attempt's, so the resumed
    # run is the uninterrupted one, line for line.
    verdict = compare_runs(only_run_dir(straight_dir / "outputs"), run)
    assert verdict.status == IDENTICAL, verdict.headline
    assert verdict.lines == (4, 4)

    # The record's last values: the last attempt's, and what only attempt 1 logged is
    # still there rather than lost with the new attempt's record.
    listed = cli("runs", "outputs", "--json", cwd=broken_dir)
    assert listed.returncode == 0, listed.stderr
    (entry_row,) = json.loads(listed.stdout)
    assert entry_row["attempts"] == 2
    assert entry_row["metrics"] == {"loss": 0.25, "acc": 0.5}


def test_lines_without_an_attempt_are_the_first_attempts() -> None:
    old = [
        {"kind": "metrics", "rank": 0, "step": 1, "loss": 1.0},
        {"kind": "metrics", "rank": 0, "step": 2, "loss": 0.9},
        {"kind": "metrics", "rank": 0, "step": None, "lr": 0.1},
    ]
    later = [
        {"kind": "metrics", "rank": 0, "attempt": 2, "step": 2, "loss": 0.5},
        {"kind": "metrics", "rank": 0, "attempt": 2, "step": 3, "loss": 0.4},
        {"kind": "summary", "rank": 0, "attempt": 2, "step": None, "best": 0.4},
    ]
    kept = effective_lines([*old, *later])
    assert kept == [old[0], old[2], *later]
    metrics, summary = last_values(kept)
    assert metrics == {"loss": (0.4, 3), "lr": (0.1, None)}
    assert summary == {"best": 0.4}
    # Only lines the same attempt wrote twice both stay: nothing later redid them.
    assert effective_lines(old + old) == old + old


def _reruns_of(outputs: Path, original: Path) -> list[RunRecord]:
    records = [read_run(path) for path in run_dirs(outputs) if path != original]
    return sorted(
        (record for record in records if record.rerun_of == str(original)),
        key=lambda record: record.run_id,
    )


@pytest.mark.slow
def test_a_forced_resume_with_another_config_keeps_what_each_attempt_ran(tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    first = cli("run", str(write_recipe(tmp_path)), "--entry", entry, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = only_run_dir(tmp_path / "outputs")
    reports = run / "reports"
    first_config = (reports / "config.yaml").read_bytes()
    first_bundle = json.loads((reports / "rerun.json").read_text(encoding="utf-8"))
    assert first_bundle["attempt"] == 1

    other = write_recipe(tmp_path, minimal_recipe(tmp_path, training={"seed": 99}), "other.yaml")
    argv = ("run", str(other), "--entry", entry, "--resume", str(run), "--force")
    forced = cli(*argv, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr

    # Attempt 1's config and bundle are kept beside attempt 2's, never written over.
    kept = reports / "attempts" / "1"
    assert (kept / "config.yaml").read_bytes() == first_config
    kept_bundle = json.loads((kept / "rerun.json").read_text(encoding="utf-8"))
    assert kept_bundle["config"]["file"] == "reports/attempts/1/config.yaml"
    assert kept_bundle["config"]["sha256"] == hashlib.sha256(first_config).hexdigest()
    assert {k: v for k, v in kept_bundle.items() if k != "config"} == {
        k: v for k, v in first_bundle.items() if k != "config"
    }
    assert "seed: 99" in (reports / "config.yaml").read_text(encoding="utf-8")
    assert json.loads((reports / "rerun.json").read_text(encoding="utf-8"))["attempt"] == 2
    # Each attempt says which config it ran.
    record = read_run(run)
    hashes = [attempt.config_hash for attempt in record.attempts]
    assert len(hashes) == 2 and None not in hashes and hashes[0] != hashes[1]
    assert record.config_hash == hashes[1]

    # `rerun RUN --attempt 1` runs attempt 1's config again; `rerun RUN` the latest's.
    again = cli("rerun", str(run), "--attempt", "1", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    latest = cli("rerun", str(run), cwd=tmp_path)
    assert latest.returncode == 0, latest.stdout + latest.stderr
    reruns = _reruns_of(tmp_path / "outputs", run)
    assert [rerun.config_hash for rerun in reruns] == hashes

    missing = cli("rerun", str(run), "--attempt", "3", cwd=tmp_path)
    assert missing.returncode == 2
    assert f"{reports / 'attempts' / '3' / 'rerun.json'} does not exist" in missing.stderr


# A torchrun job of two ranks: in the first attempt rank 1 fails once rank 0 logged its
# first step; torchrun restarts both, and the second attempt logs steps 1 and 2 again.
TORCHRUN_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from orchestrator_fsm import Config, RootOrchestrator

    with RootOrchestrator(Config.from_recipe(sys.argv[1])) as orch:
        attempt = orch.attempt
        mark = orch.paths.root / f"attempt{attempt.number}.rank{orch.rank}.json"
        mark.write_text(json.dumps([attempt.number, attempt.restart_count, attempt.resumed]))
        orch.log_metrics({"loss": 1.0}, step=1)
        if attempt.number == 1:
            if orch.rank == 1:
                deadline = time.monotonic() + 60
                while not (orch.paths.root / "metrics.jsonl").exists():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                raise ValueError("rank 1 lost its data")
            time.sleep(60)  # torchrun stops it when rank 1 fails
        orch.log_metrics({"loss": 0.5}, step=2)
    """
)


@pytest.mark.slow
def test_a_torchrun_restart_logs_each_ranks_metrics_with_its_attempt(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    data = minimal_recipe(tmp_path)
    data["infrastructure"]["join_timeout_s"] = 120
    data["telemetry"]["heartbeat_s"] = 0
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT, encoding="utf-8")
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "TORCHELASTIC_")) and key not in ("RANK", "WORLD_SIZE")
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "--max-restarts=1", "--monitor-interval=0.2"]
    result = subprocess.run(
        [*command, str(script), str(recipe)],
        env={**clean, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_dir(tmp_path / "outputs")
    assert read_run(run).effective_status == "completed"
    for rank in (0, 1):
        second = json.loads((run / f"attempt2.rank{rank}.json").read_text(encoding="utf-8"))
        assert second == [2, 1, True]
        name = "metrics.jsonl" if rank == 0 else f"metrics.rank{rank}.jsonl"
        steps = [(line["attempt"], line["step"]) for line in _lines(run, name)]
        assert steps == [(1, 1), (2, 1), (2, 2)]
    # Rank 0's results are the second attempt's: step 1 counts once.
    assert [(line["attempt"], line["step"]) for line in read_metrics(run)] == [(2, 1), (2, 2)]
