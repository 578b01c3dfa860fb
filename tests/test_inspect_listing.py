"""What ``inspect`` and ``runs`` show of a run: every file it wrote, read from its
directory, and the metrics of a run killed before its record was final."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import cli, wait_for

# Logs metrics and a summary, writes where observers and other ranks would, says so,
# and waits to be killed (the heartbeat is off: run.json never hears of the values).
SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from conftest import minimal_recipe
    from orchestrator_fsm import Config, RootOrchestrator

    cfg = Config.from_dict(minimal_recipe(Path(sys.argv[1]), telemetry={"heartbeat_s": 0}))
    with RootOrchestrator(cfg) as orch:
        for step in range(3):
            orch.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        orch.log_summary({"final_acc": 0.75})
        (orch.paths.root / "tensorboard").mkdir()
        (orch.paths.root / "tensorboard" / "events.out.tfevents.1").write_text("x")
        (orch.paths.root / "reruns.jsonl").write_text("{}\\n")
        (orch.paths.root / "logged").write_text(str(orch.paths.root))
        if sys.argv[3] == "wait":
            time.sleep(600)
    """
)


def _run(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], Path]:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT, encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), str(Path(__file__).parent), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    (marker,) = wait_for(lambda: list((tmp_path / "outputs").glob("*/logged")), process)
    return process, marker.parent


@pytest.mark.slow
def test_a_sigkilled_run_shows_its_metrics_in_inspect_and_runs(tmp_path: Path) -> None:
    process, root = _run(tmp_path, "wait")
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert json.loads((root / "run.json").read_text())["summary"] == {}

    shown = cli("inspect", str(root), "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["effective_status"] == "crashed"
    assert report["metrics"] == {"loss": {"last": pytest.approx(1 / 3), "step": 2}}
    assert report["summary"] == {"final_acc": 0.75}
    table = cli("inspect", str(root), cwd=tmp_path).stdout
    assert "final_acc=0.75" in table and "loss=0.333333 (step 2)" in table

    listed = cli("runs", str(tmp_path / "outputs"), "--json", cwd=tmp_path)
    (run,) = json.loads(listed.stdout)
    assert run["status"] == "crashed"
    assert run["metrics"] == {"loss": pytest.approx(1 / 3)}
    assert run["summary"] == {"final_acc": 0.75}
    assert "final_acc=0.75" in cli("runs", str(tmp_path / "outputs"), cwd=tmp_path).stdout


@pytest.mark.slow
def test_inspect_lists_every_file_the_run_directory_holds(tmp_path: Path) -> None:
    process, root = _run(tmp_path, "end")
    assert process.wait(timeout=120) == 0
    (root / "ranks").mkdir()
    (root / "ranks" / "rank1.json").write_text("{}")
    (root / "metrics.rank1.jsonl").write_text("")

    report = json.loads(cli("inspect", str(root), "--json", cwd=tmp_path).stdout)
    files = report["files"]
    assert files["."] == [
        "run.json",
        "lifecycle.jsonl",
        "logged",
        "metrics.jsonl",
        "metrics.rank1.jsonl",
        "reruns.jsonl",
    ]
    assert files["tensorboard"] == ["events.out.tfevents.1"]
    assert files["ranks"] == ["rank1.json"]
    assert "stdout.log" in files["logs"] and "run.log" in files["logs"]
    shown = cli("inspect", str(root), cwd=tmp_path).stdout
    for name in ("metrics.jsonl", "reruns.jsonl", "ranks/", "tensorboard/", "rank1.json"):
        assert name in shown, shown
    assert ".run.json.reserve" not in shown
