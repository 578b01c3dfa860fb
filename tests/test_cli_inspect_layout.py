"""What `inspect` shows a person at 80 columns: long errors whole and wrapped at words,
the interrupting signal by name, the pipeline as a row of the timeline, and the entry
as the user gave it. The runs and `inspect` itself are the real command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import minimal_recipe, wait_for

from orchestrator_fsm import Config, RootOrchestrator

COMMAND = str(Path(sys.executable).parent / "orchestrator-fsm")

ENTRIES = """
import pathlib, time

def nap(orch):
    time.sleep(0.3)

def wait(orch):
    (orch.paths.root / "entered").write_text("yes")
    time.sleep(120)
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    data = minimal_recipe(tmp_path, infrastructure={"lock": {"timeout_s": 0}})
    data["infrastructure"]["lock"]["path"] = str(tmp_path / "locks" / "run.lock")
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    (tmp_path / "entries.py").write_text(ENTRIES, encoding="utf-8")
    return path


def command(
    tmp_path: Path, *argv: str, columns: int = 80, check: int | None = 0
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS=str(columns), XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = subprocess.run(
        [COMMAND, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    if check is not None:
        assert result.returncode == check, result.stderr
    return result


def only_run(tmp_path: Path) -> Path:
    (run,) = [p for p in (tmp_path / "outputs").iterdir() if not p.name.startswith(".")]
    return run


@pytest.mark.slow
def test_a_run_refused_by_the_lock_reads_whole_at_80_columns(tmp_path: Path, recipe: Path) -> None:
    holder_cfg = minimal_recipe(tmp_path / "holder")
    holder_cfg["infrastructure"]["lock"]["path"] = str(tmp_path / "locks" / "run.lock")
    with RootOrchestrator(Config.from_dict(holder_cfg)):
        refused = command(tmp_path, "run", str(recipe), "--entry", "entries.py:nap", check=1)
    assert "LockContendedError" in refused.stderr
    run = only_run(tmp_path)
    error = json.loads((run / "run.json").read_text(encoding="utf-8"))["error"]

    out = command(tmp_path, "inspect", str(run)).stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    # The whole message, its words intact (a path or the run id is never cut in two),
    # except a word longer than a line (the lock's path in a deep temporary folder, as
    # under pytest-xdist), which has to be.
    message = f"refused at the run lock: LockContendedError: {error['message']}"
    assert "".join(message.split()) in "".join(out.split())
    printed = set(out.split())
    assert [w for w in message.split() if len(w) < 80 and w not in printed] == []
    timeline = out[out.index("lifecycle timeline") : out.index("refused at the run lock")]
    (lock_row,) = [line for line in timeline.splitlines() if "acquire_lock" in line]
    assert lock_row.split()[-1] == "error"
    assert "LockContendedError" not in timeline  # no 8-character fragments in a column
    assert "attempts" in out and "1 refused (LockContendedError)" in out


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_names_its_signal_and_the_pipeline_row(
    tmp_path: Path, recipe: Path, signum: signal.Signals
) -> None:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [COMMAND, "run", str(recipe), "--entry", "entries.py:wait"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        wait_for(lambda: list((tmp_path / "outputs").glob("*/entered")), proc)
        running = command(tmp_path, "inspect", str(only_run(tmp_path))).stdout
        proc.send_signal(signum)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum
    (pipeline_row,) = [line for line in running.splitlines() if " pipeline " in line]
    assert pipeline_row.split()[1:] == ["in", "ready", "pipeline", "-", "running"]

    out = command(tmp_path, "inspect", str(only_run(tmp_path))).stdout
    assert f"interrupted by {signum.name} in step pipeline" in out
    assert "KeyboardInterrupt" not in out and "RunInterrupted" not in out
    (pipeline_row,) = [line for line in out.splitlines() if " pipeline " in line]
    assert pipeline_row.split()[1:4] == ["in", "ready", "pipeline"]
    assert pipeline_row.split()[-1] == signum.name


def test_a_bare_keyboard_interrupt_is_shown_as_ctrl_c(tmp_path: Path) -> None:
    cfg = Config.from_dict(minimal_recipe(tmp_path))
    with pytest.raises(KeyboardInterrupt), RootOrchestrator(cfg) as orch:
        raise KeyboardInterrupt
    assert orch.paths is not None
    out = command(tmp_path, "inspect", str(orch.paths.root)).stdout
    assert "interrupted by SIGINT (Ctrl-C) in step pipeline" in out
    assert "KeyboardInterrupt: " not in out


@pytest.mark.slow
def test_the_pipeline_is_a_timeline_row_and_a_phase_of_the_record(
    tmp_path: Path, recipe: Path
) -> None:
    command(tmp_path, "run", str(recipe), "--entry", "entries.py:nap")
    run = only_run(tmp_path)
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert record["phases"]["pipeline"] >= 0.3  # the entry sleeps 0.3 s in it

    out = command(tmp_path, "inspect", str(run)).stdout
    timeline = out[out.index("lifecycle timeline") : out.index("files")].splitlines()

    def row_of(step: str) -> int:
        (index,) = [i for i, line in enumerate(timeline) if step in line.split()]
        return index

    assert row_of("resolve_device") < row_of("pipeline") < row_of("cleanup")
    pipeline = timeline[row_of("pipeline")].split()
    assert pipeline[1:4] == ["in", "ready", "pipeline"]
    assert pipeline[-1] == "ok"


@pytest.mark.slow
def test_the_entry_is_recorded_and_shown_as_the_user_gave_it(tmp_path: Path, recipe: Path) -> None:
    command(tmp_path, "run", str(recipe), "--entry", "entries.py:nap")
    run = only_run(tmp_path)
    record = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert record["entry"] == "entries.py:nap"
    assert record["entry_module"] == "entries.py"
    assert record["entry_point"] == "orchestrator-fsm"

    out = command(tmp_path, "inspect", str(run), columns=200).stdout
    (entry_row,) = [line for line in out.splitlines() if "│ entry " in line]
    assert entry_row.split("│")[2].strip() == "entries.py:nap"
    (command_row,) = [line for line in out.splitlines() if "│ command " in line]
    assert command_row.split("│")[2].strip() == (
        f"orchestrator-fsm run {recipe} --entry entries.py:nap"
    )
    assert ".venv" not in out


@pytest.mark.slow
def test_a_module_entry_records_its_module(tmp_path: Path, recipe: Path) -> None:
    command(tmp_path, "run", str(recipe), "--entry", "entries:nap")
    record = json.loads((only_run(tmp_path) / "run.json").read_text(encoding="utf-8"))
    assert (record["entry"], record["entry_module"]) == ("entries:nap", "entries")
