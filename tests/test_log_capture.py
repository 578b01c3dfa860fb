"""A live run captures the user's work: their loggers, warnings and (optionally) output."""

from __future__ import annotations

import io
import logging
import sys
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import minimal_recipe

from orchestrator_fsm import RootOrchestrator
from orchestrator_fsm.config import Config
from orchestrator_fsm.errors import ConfigError
from orchestrator_fsm.layout import STDOUT_LOG
from orchestrator_fsm.phases.logging import Logger, _Tee, _TeeFile
from orchestrator_fsm.run_log import FILE_ONLY


def _unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex}"


def _run_log(logs: Path) -> str:
    return (logs / "run.log").read_text(encoding="utf-8")


def _user_logger() -> logging.Logger:
    return logging.getLogger(f"mytrain{uuid.uuid4().hex}")


def test_a_user_logger_line_lands_in_run_log_and_on_the_console_once(
    make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    message = _unique("epoch 1 loss 0.5")
    user = _user_logger()

    with RootOrchestrator(make_config()) as orch:
        user.info(message)
        assert orch.paths is not None
        logs = orch.paths.logs

    in_file = [line for line in _run_log(logs).splitlines() if message in line]
    assert len(in_file) == 1
    assert f"INFO     {user.name}: {message}" in in_file[0]
    assert capsys.readouterr().err.count(message) == 1


def test_a_warning_lands_in_run_log_once_and_on_the_console_once(
    make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    message = _unique("learning rate is high")

    with RootOrchestrator(make_config()) as orch:
        warnings.warn(message, UserWarning, stacklevel=1)
        assert orch.paths is not None
        logs = orch.paths.logs

    in_file = [line for line in _run_log(logs).splitlines() if message in line]
    assert len(in_file) == 1
    assert "WARNING  py.warnings:" in in_file[0]
    assert f"UserWarning: {message}" in in_file[0]
    assert capsys.readouterr().err.count(message) == 1


def test_console_level_warning_keeps_info_in_the_file_and_off_the_console(
    make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    quiet, loud = _unique("step 10"), _unique("loss is nan")
    user = _user_logger()

    cfg = make_config(telemetry={"console_level": "warning"})
    with RootOrchestrator(cfg) as orch:
        assert orch.run_logger is not None
        orch.run_logger.info(quiet)
        user.info(quiet)
        user.warning(loud)
        assert orch.paths is not None
        logs = orch.paths.logs

    assert _run_log(logs).count(quiet) == 2
    assert _run_log(logs).count(loud) == 1
    err = capsys.readouterr().err
    assert quiet not in err
    assert err.count(loud) == 1


def test_a_user_console_handler_on_root_prints_user_lines_once(
    make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    theirs = logging.StreamHandler(sys.stderr)  # as logging.basicConfig() adds
    root.addHandler(theirs)
    message, package_message = _unique("user line"), _unique("package line")
    try:
        with RootOrchestrator(make_config()) as orch:
            _user_logger().warning(message)
            assert orch.run_logger is not None
            orch.run_logger.warning(package_message)
            assert orch.paths is not None
            logs = orch.paths.logs
    finally:
        root.removeHandler(theirs)

    err = capsys.readouterr().err
    assert err.count(message) == 1
    assert err.count(package_message) == 1
    assert _run_log(logs).count(message) == 1


def test_after_the_run_root_warnings_capture_and_streams_are_as_before(
    make_config: Callable[..., Any],
) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level, warnings.showwarning, sys.stdout, sys.stderr)

    with RootOrchestrator(make_config(telemetry={"capture_stdout": True})):
        assert root.getEffectiveLevel() <= logging.INFO
        assert warnings.showwarning is not before[2]
        assert sys.stdout is not before[3]
        assert sys.stderr is not before[4]

    after = (list(root.handlers), root.level, warnings.showwarning, sys.stdout, sys.stderr)
    assert after == before


def test_capture_stdout_tees_print_into_stdout_log(
    make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    printed, errored, logged = _unique("printed"), _unique("to stderr"), _unique("logged")

    with RootOrchestrator(make_config(telemetry={"capture_stdout": True})) as orch:
        print(printed)
        print(errored, file=sys.stderr)
        _user_logger().info(logged)
        assert orch.paths is not None
        logs = orch.paths.logs

    captured = capsys.readouterr()
    assert captured.out.count(printed) == 1
    assert captured.err.count(errored) == 1
    copied = (logs / STDOUT_LOG).read_text(encoding="utf-8")
    assert copied.count(printed) == 1
    assert copied.count(errored) == 1
    assert logged not in copied  # log records are in run.log, not copied twice
    assert _run_log(logs).count(logged) == 1


def test_print_lands_in_stdout_log_by_default(
    make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    printed = _unique("printed")

    with RootOrchestrator(make_config()) as orch:
        print(printed)
        assert orch.paths is not None
        logs = orch.paths.logs

    assert capsys.readouterr().out.count(printed) == 1
    assert (logs / STDOUT_LOG).read_text(encoding="utf-8") == printed + "\n"


def test_a_rank_mark_starts_every_line_of_the_shared_stdout_log(tmp_path: Path) -> None:
    copy = _TeeFile(tmp_path / STDOUT_LOG, report_to=io.StringIO(), line_mark="[rank1] ")
    tee = _Tee(io.StringIO(), copy)  # type: ignore[arg-type]
    for text in ("one\ntw", "o\n", "\nthree", " and more\nfour\n"):
        tee.write(text)
    copy.close()
    assert (tmp_path / STDOUT_LOG).read_text(encoding="utf-8") == (
        "[rank1] one\n[rank1] two\n\n[rank1] three and more\n[rank1] four\n"
    )


def test_without_capture_stdout_nothing_is_installed(make_config: Callable[..., Any]) -> None:
    streams = (sys.stdout, sys.stderr)

    with RootOrchestrator(make_config(telemetry={"capture_stdout": False})) as orch:
        assert (sys.stdout, sys.stderr) == streams
        assert orch.paths is not None
        logs = orch.paths.logs

    assert not (logs / STDOUT_LOG).exists()


def test_a_tee_on_a_full_disk_writes_through_and_reports_once() -> None:
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("needs /dev/full")
    original, report = io.StringIO(), io.StringIO()
    copy = _TeeFile(full, report_to=report)
    tee = _Tee(original, copy)  # type: ignore[arg-type]

    for _ in range(3):
        tee.write("x" * 10 + "\n")
    tee.flush()
    copy.close()

    assert original.getvalue() == ("x" * 10 + "\n") * 3
    assert report.getvalue().count("could not write to /dev/full") == 1


def test_the_report_console_is_a_short_summary_while_run_log_has_it_all(
    make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with RootOrchestrator(make_config()) as orch:
        capsys.readouterr()
        orch.log_environment_report()
        console = capsys.readouterr().err.splitlines()
        assert orch.paths is not None
        logs = orch.paths.logs

    assert 3 <= len(console) <= 6, console
    assert any("environment report for run" in line for line in console)
    assert any("environment report saved to" in line for line in console)
    assert not any("torch_num_threads" in line for line in console)
    in_file = _run_log(logs)
    for detail in ("[hardware]", "[determinism]", "torch_num_threads", "[distributed]"):
        assert detail in in_file


def test_a_debug_console_shows_the_full_report(
    make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with RootOrchestrator(make_config(telemetry={"console_level": "DEBUG"})) as orch:
        capsys.readouterr()
        orch.log_environment_report()
        console = capsys.readouterr().err

    assert "torch_num_threads" in console
    assert "[hardware]" in console


def test_file_only_records_stay_off_the_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"orchestrator_fsm.test_capture.{uuid.uuid4().hex}"
    logger = Logger.setup(name, tmp_path, "INFO", console_level="INFO")

    logger.info("detail", extra=FILE_ONLY)
    logger.info("summary")

    assert capsys.readouterr().err.splitlines() == ["[rank0] INFO     summary"]
    assert "detail" in _run_log(tmp_path)


def test_an_error_with_its_traceback_reaches_run_log(make_config: Callable[..., Any]) -> None:
    with RootOrchestrator(make_config()) as orch:
        assert orch.run_logger is not None
        try:
            raise RuntimeError("boom in the training loop")
        except RuntimeError as exc:
            orch.run_logger.error("the run failed", exc_info=exc)
        assert orch.paths is not None
        logs = orch.paths.logs

    in_file = _run_log(logs)
    assert "Traceback (most recent call last):" in in_file
    assert "RuntimeError: boom in the training loop" in in_file


def test_console_level_is_validated_like_log_level(tmp_path: Path) -> None:
    cfg = Config.from_dict(minimal_recipe(tmp_path, telemetry={"console_level": "warning"}))
    assert cfg.telemetry.console_level == "WARNING"
    assert cfg.telemetry.effective_console_level == "WARNING"
    default = Config.from_dict(minimal_recipe(tmp_path, telemetry={"log_level": "DEBUG"}))
    assert default.telemetry.console_level is None
    assert default.telemetry.effective_console_level == "DEBUG"
    assert default.telemetry.capture_stdout is True

    with pytest.raises(ConfigError, match=r"telemetry\.console_level"):
        Config.from_dict(minimal_recipe(tmp_path, telemetry={"console_level": "LOUD"}))
    with pytest.raises(ConfigError, match=r"telemetry\.capture_stdout"):
        Config.from_dict(minimal_recipe(tmp_path, telemetry={"capture_stdout": "yes"}))
