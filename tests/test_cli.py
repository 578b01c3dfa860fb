"""The ``orchestrator-fsm`` command: run, diagram, inspect, validate and their exit codes."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli, cli_command, minimal_recipe, only_run_dir, run_dirs, wait_for

from orchestrator_fsm import __version__
from orchestrator_fsm.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from orchestrator_fsm.diagrams import render_dot, render_mermaid
from orchestrator_fsm.lifecycle.table import advance_path

ENTRIES = """
import os
import time

from orchestrator_fsm.errors import ConfigError


def record(orch):
    (orch.paths.exports / "called.txt").write_text(orch.state.value)


def boom(orch):
    raise RuntimeError("boom in the pipeline")


def bad_setting(orch):
    raise ConfigError(
        "training.epochs is bad",
        problems=[("training.epochs", "expected at least 1, found 0")],
        source="pipeline-recipe.yaml",
    )


def wait_forever(orch):
    (orch.paths.root / "entered").write_text(str(os.getpid()))
    while True:
        time.sleep(0.05)


class Pipelines:
    @staticmethod
    def nested(orch):
        (orch.paths.exports / "called.txt").write_text("nested")


NOT_CALLABLE = 42
"""


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rich wraps tables to 80 columns when not on a terminal; long tmp paths would then
    # be split across lines. COLUMNS is how users widen it too.
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(minimal_recipe(tmp_path)), encoding="utf-8")
    return path


@pytest.fixture
def entries(tmp_path: Path) -> Path:
    path = tmp_path / "entries.py"
    path.write_text(ENTRIES, encoding="utf-8")
    return path


def run_entry(recipe: Path, entries: Path, function: str, *options: str) -> int:
    """``orchestrator-fsm run RECIPE --entry ENTRIES:FUNCTION OPTIONS...``, in-process."""
    return main(["run", str(recipe), "--entry", f"{entries}:{function}", *options])


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def last_lines(text: str, count: int) -> list[str]:
    return text.rstrip().splitlines()[-count:]


def test_version_flag_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == f"orchestrator-fsm {__version__}"


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    result = cli("--version", cwd=tmp_path)
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.strip() == f"orchestrator-fsm {__version__}"


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE
    assert "usage: orchestrator-fsm" in capsys.readouterr().err


def test_unknown_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--no-such-option"]) == EXIT_USAGE
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_run_calls_the_entry_at_ready_and_ends_with_run_directory_and_status(
    tmp_path: Path, recipe: Path, entries: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_entry(recipe, entries, "record") == EXIT_OK

    root = only_run_dir(tmp_path / "outputs")
    assert (root / "exports" / "called.txt").read_text() == "ready"
    assert read_json(root / "run.json")["status"] == "completed"
    out = capsys.readouterr().out
    assert last_lines(out, 2) == [f"run directory: {root}", "status: completed"]


def test_run_accepts_a_dotted_attribute_path_in_the_entry(
    tmp_path: Path, recipe: Path, entries: Path
) -> None:
    assert run_entry(recipe, entries, "Pipelines.nested") == EXIT_OK
    assert (only_run_dir(tmp_path / "outputs") / "exports" / "called.txt").read_text() == "nested"


def test_run_imports_the_entry_module_from_the_working_directory_and_restores_sys_path(
    tmp_path: Path,
    recipe: Path,
    entries: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "entries", raising=False)
    path_before = list(sys.path)
    try:
        assert main(["run", str(recipe), "--entry", "entries:record"]) == EXIT_OK
    finally:
        sys.modules.pop("entries", None)
    assert sys.path == path_before
    assert (only_run_dir(tmp_path / "outputs") / "exports" / "called.txt").read_text() == "ready"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("no_colon_here", "must be 'module:function' or 'path/to/file.py:function'"),
        ("entries.py:", "must be 'module:function'"),
        ("orchestrator_fsm_no_such_module:run", "entry module 'orchestrator_fsm_no_such_module'"),
        ("json:dumpz", "'json' has no attribute 'dumpz'"),
        ("{entries}:NOT_CALLABLE", "names an object of type int, not a callable"),
        ("{entries}:recrod", "did you mean 'record'?"),
        ("{tmp}/missing.py:main", "entry file not found"),
    ],
)
def test_bad_entry_exits_2_with_a_clear_message_before_any_run_starts(
    tmp_path: Path,
    recipe: Path,
    entries: Path,
    capsys: pytest.CaptureFixture[str],
    spec: str,
    expected: str,
) -> None:
    spec = spec.format(entries=entries, tmp=tmp_path)
    assert main(["run", str(recipe), "--entry", spec]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    assert run_dirs(tmp_path / "outputs") == []


def test_entry_whose_import_fails_exits_2_naming_the_error(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('cannot import me')\n", encoding="utf-8")
    assert main(["run", str(recipe), "--entry", f"{broken}:main"]) == EXIT_USAGE
    assert "RuntimeError: cannot import me" in capsys.readouterr().err
    assert run_dirs(tmp_path / "outputs") == []


def test_pipeline_error_exits_1_with_one_line_and_the_run_marked_failed(
    tmp_path: Path, recipe: Path, entries: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_entry(recipe, entries, "boom") == EXIT_FAILURE

    captured = capsys.readouterr()
    error_lines = [line for line in captured.err.splitlines() if line.startswith("error")]
    assert error_lines == ["error in step 'pipeline': RuntimeError: boom in the pipeline"]
    assert "Traceback" not in captured.err
    root = only_run_dir(tmp_path / "outputs")
    run = read_json(root / "run.json")
    assert run["status"] == "failed"
    assert run["error"] == {
        "type": "RuntimeError",
        "message": "boom in the pipeline",
        "step": "pipeline",
        "where": f"{entries}:13 in boom",
    }
    assert last_lines(captured.out, 2) == [f"run directory: {root}", "status: failed"]


def test_debug_shows_the_traceback_of_a_failed_pipeline(
    recipe: Path, entries: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_entry(recipe, entries, "boom", "--debug") == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert "boom in the pipeline" in err


def test_lifecycle_failure_exits_1_naming_the_failed_step(
    tmp_path: Path, recipe: Path, entries: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No machine has a 100th CUDA device, so device resolution fails everywhere.
    assert run_entry(recipe, entries, "record", "--set", "hardware.device=cuda:99") == EXIT_FAILURE

    captured = capsys.readouterr()
    assert "error in step 'resolve_device': DeviceError" in captured.err
    run = read_json(only_run_dir(tmp_path / "outputs") / "run.json")
    assert (run["status"], run["error"]["step"]) == ("failed", "resolve_device")
    assert last_lines(captured.out, 1) == ["status: failed"]


def test_config_error_raised_by_the_pipeline_exits_2_listing_its_problems(
    recipe: Path, entries: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_entry(recipe, entries, "bad_setting") == EXIT_USAGE
    captured = capsys.readouterr()
    assert "pipeline-recipe.yaml: training.epochs: expected at least 1, found 0" in captured.err
    assert last_lines(captured.out, 1) == ["status: failed"]


def write_broken_recipe(tmp_path: Path) -> Path:
    data = minimal_recipe(tmp_path)
    data["training"]["seed"] = -1
    data["hardware"]["devise"] = "cpu"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["run", "validate"])
def test_invalid_recipe_exits_2_listing_every_problem_with_path_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    broken = write_broken_recipe(tmp_path)
    assert main([command, str(broken)]) == EXIT_USAGE

    err = capsys.readouterr().err
    assert "(2 problems)" in err
    assert f"{broken}: training.seed: " in err
    assert f"{broken}: hardware.devise: " in err
    assert "did you mean 'device'?" in err
    assert run_dirs(tmp_path / "outputs") == []


def test_bad_override_is_a_config_error_naming_the_override(
    recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(recipe), "--set", "hardware.num_workers=-3"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "hardware.num_workers" in err
    assert "'hardware.num_workers=-3'" in err


def test_missing_recipe_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.yaml"
    assert main(["run", str(missing)]) == EXIT_USAGE
    assert f"{missing}: no such file" in capsys.readouterr().err


def test_run_restores_the_previous_sigterm_handler(recipe: Path, entries: Path) -> None:
    def previous(signum: int, frame: object) -> None:
        raise AssertionError("not called in this test")

    original = signal.signal(signal.SIGTERM, previous)
    try:
        assert run_entry(recipe, entries, "record") == EXIT_OK
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)


def _default_sigint() -> None:
    # A child started from a shell without job control inherits SIGINT as ignored, and
    # Python then installs no KeyboardInterrupt handler; Ctrl-C in a terminal never has
    # that problem, so the test gives the child the terminal's default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def launch() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*argv: str, cwd: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            cli_command(*argv),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigint,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_the_pipeline_exits_128_plus_signum_with_the_run_marked_interrupted(
    tmp_path: Path,
    recipe: Path,
    entries: Path,
    launch: Callable[..., subprocess.Popen[str]],
    signum: signal.Signals,
) -> None:
    proc = launch("run", str(recipe), "--entry", f"{entries}:wait_forever", cwd=tmp_path)
    marker = wait_for(lambda: list((tmp_path / "outputs").glob("*/entered")), proc)[0]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 128 + signum, err
    root = marker.parent
    run = read_json(root / "run.json")
    assert run["status"] == "interrupted"
    assert run["state"] == "cleaned"
    assert (run["error"]["type"], run["error"]["message"]) == ("RunInterrupted", signum.name)
    assert "Traceback" not in err
    assert last_lines(out, 2) == [f"run directory: {root}", "status: interrupted"]


def test_diagram_prints_mermaid_to_stdout_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram"]) == EXIT_OK
    assert capsys.readouterr().out == render_mermaid()


def test_diagram_writes_the_output_file_creating_its_folder(tmp_path: Path) -> None:
    target = tmp_path / "diagrams" / "lifecycle.dot"
    assert main(["diagram", "--format", "dot", "--output", str(target)]) == EXIT_OK
    assert target.read_text(encoding="utf-8") == render_dot()
    assert [p.name for p in target.parent.iterdir()] == ["lifecycle.dot"]  # no temp files


def test_svg_without_graphviz_exits_1_saying_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no `dot` anywhere
    target = tmp_path / "lifecycle.svg"
    assert main(["diagram", "--format", "svg", "--output", str(target)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Graphviz" in err
    assert "--format mermaid" in err
    assert not target.exists()


def test_diagram_rejects_an_unknown_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagram", "--format", "png"]) == EXIT_USAGE
    assert "invalid choice: 'png'" in capsys.readouterr().err


def test_inspect_shows_status_timeline_and_files_of_a_completed_run(
    tmp_path: Path, recipe: Path, entries: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_entry(recipe, entries, "record") == EXIT_OK
    root = only_run_dir(tmp_path / "outputs")
    capsys.readouterr()

    assert main(["inspect", str(root)]) == EXIT_OK
    out = capsys.readouterr().out
    assert root.name in out
    assert "completed" in out
    for source, dest in [("created", "seeded"), ("guarded", "ready"), ("ready", "cleaned")]:
        assert f"{source} -> {dest}" in out
    assert "acquire_lock" in out
    assert "called.txt" in out
    assert "config.yaml" in out
    assert "error" not in out


def test_inspect_json_is_run_json_plus_effective_status_and_transitions(
    tmp_path: Path, recipe: Path, entries: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_entry(recipe, entries, "record") == EXIT_OK
    root = only_run_dir(tmp_path / "outputs")
    capsys.readouterr()

    assert main(["inspect", str(root), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    run = read_json(root / "run.json")
    assert {key: report[key] for key in run} == run
    assert report["effective_status"] == "completed"
    path = [state.value for state in advance_path(is_main_process=True)]
    # The entry never made the report, so cleanup was reached from READY.
    expected = [*path[: path.index("ready") + 1], "cleaned"]
    assert [t["source"] for t in report["transitions"]] == expected[:-1]
    assert [t["dest"] for t in report["transitions"]] == expected[1:]
    assert all(t["ok"] for t in report["transitions"])
    assert report["files"]["exports"] == ["called.txt"]


def test_inspect_formats_a_run_record_without_printing(
    tmp_path: Path, recipe: Path, entries: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rich.console import Console

    from orchestrator_fsm.cli.inspect import (
        RunFiles,
        format_error,
        format_files,
        format_summary,
        format_timeline,
    )
    from orchestrator_fsm.lifecycle.record import read_run

    assert run_entry(recipe, entries, "boom") == EXIT_FAILURE
    run = read_run(only_run_dir(tmp_path / "outputs"))
    capsys.readouterr()

    files = RunFiles(records={"run.json": True}, folders={"exports": []})
    renderables = [format_summary(run), format_timeline(run.transitions), format_files(files)]
    error = format_error(run)
    assert capsys.readouterr() == ("", "")
    console = Console(record=True, width=250, file=io.StringIO())
    for renderable in renderables:
        console.print(renderable)
    text = console.export_text()
    assert run.run_id in text
    assert "failed" in text
    assert "exports/" in text
    assert "(empty)" in text
    assert error is not None
    assert error.plain == "failed step: pipeline: RuntimeError: boom in the pipeline"


def test_inspect_shows_the_failed_step_and_error(
    tmp_path: Path, recipe: Path, entries: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_entry(recipe, entries, "boom") == EXIT_FAILURE
    root = only_run_dir(tmp_path / "outputs")
    capsys.readouterr()

    assert main(["inspect", str(root)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "failed step: pipeline: RuntimeError: boom in the pipeline" in out
    assert main(["inspect", str(root), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["effective_status"] == "failed"


def test_inspect_shows_a_failed_lifecycle_step_in_the_timeline(
    tmp_path: Path, recipe: Path, entries: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_entry(recipe, entries, "record", "--set", "hardware.device=cuda:99") == EXIT_FAILURE
    root = only_run_dir(tmp_path / "outputs")
    capsys.readouterr()

    assert main(["inspect", str(root), "--json"]) == EXIT_OK
    transitions = json.loads(capsys.readouterr().out)["transitions"]
    failed = [t for t in transitions if not t["ok"]]
    assert [(t["step"], t["error"].split(":")[0]) for t in failed] == [
        ("resolve_device", "DeviceError")
    ]
    assert transitions[-1]["dest"] == "failed"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_inspect_reports_a_running_run_whose_process_is_gone_as_crashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "20250101-000000-data-model-abcdef-0000"
    root.mkdir()
    pid = dead_pid()
    run = {
        "run_id": root.name,
        "status": "running",
        "state": "ready",
        "started_at": "2025-01-01T00:00:00+00:00",
        "ended_at": None,
        "pid": pid,
        "host": socket.gethostname(),
        "error": None,
    }
    (root / "run.json").write_text(json.dumps(run), encoding="utf-8")

    assert main(["inspect", str(root)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "crashed" in out
    assert f"process {pid} is gone" in out
    assert "no transitions recorded" in out
    assert main(["inspect", str(root), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert (report["status"], report["effective_status"]) == ("running", "crashed")


def test_inspect_of_a_live_running_run_says_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "live-run"
    root.mkdir()
    run = {"run_id": root.name, "status": "running", "pid": os.getpid()}
    (root / "run.json").write_text(json.dumps(dict(run, host=socket.gethostname())))
    assert main(["inspect", str(root), "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["effective_status"] == "running"


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("missing", "is not a directory"),
        ("empty", "holds no run.json"),
        ("corrupt", "cannot read"),
        ("list", "holds a JSON list, expected an object"),
    ],
)
def test_inspect_of_something_that_is_not_a_run_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str, expected: str
) -> None:
    root = tmp_path / "candidate"
    if layout != "missing":
        root.mkdir()
    if layout == "corrupt":
        (root / "run.json").write_text('{"status": "runn', encoding="utf-8")
    if layout == "list":
        (root / "run.json").write_text("[1, 2]", encoding="utf-8")

    assert main(["inspect", str(root)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert expected in err
    assert str(root) in err


def test_validate_summarises_a_valid_recipe_with_overrides_applied(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "validate",
        str(recipe),
        "--set",
        "training.seed=7",
        "--set",
        "hardware.reproducible=true",
    ]
    assert main(argv) == EXIT_OK

    out = capsys.readouterr().out
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in out.splitlines()
        if line.count("│") == 3
    }
    assert rows["dataset"] == "toy_digits"
    assert rows["architecture"] == "tiny_mlp"
    assert rows["seed"] == "7"
    assert rows["device"] == "cpu"
    assert rows["reproducible"].startswith("True")
    assert rows["output dir"] == str(tmp_path / "outputs")
    assert "lock" in rows
    assert run_dirs(tmp_path / "outputs") == []


def test_validate_shows_a_disabled_lock(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(recipe), "--set", "infrastructure.lock.enabled=false"]) == EXIT_OK
    assert "disabled" in capsys.readouterr().out


def test_inspect_shows_the_summary_and_the_last_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator_fsm import Config, RootOrchestrator

    cfg = Config.from_dict(minimal_recipe(tmp_path / "outputs"))
    with RootOrchestrator(cfg, rank=0, local_rank=0) as orch:
        orch.log_metrics({"loss": 0.25}, step=7)
        orch.log_summary({"final_acc": 0.875})
    assert orch.paths is not None
    capsys.readouterr()
    assert main(["inspect", str(orch.paths.root)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "final_acc=0.875" in out
    assert "loss=0.25 (step 7)" in out
