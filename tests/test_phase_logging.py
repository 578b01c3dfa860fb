from __future__ import annotations

import io
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator_fsm._process import LoggerSnapshot
from orchestrator_fsm.phases.logging import LOG_FILE_NAME, Logger

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (?P<level>[A-Z]+) +(?P<name>\S+): (?P<msg>.*)$"
)


@pytest.fixture
def name() -> Iterator[str]:
    """A fresh logger name per test, put back afterwards whatever the test did."""
    logger_name = f"orchestrator_fsm.test_logging.{uuid.uuid4().hex}"
    snapshot = LoggerSnapshot.capture(logger_name)
    yield logger_name
    snapshot.restore()


def _log_lines(log_dir: Path) -> list[str]:
    return (log_dir / LOG_FILE_NAME).read_text(encoding="utf-8").splitlines()


def test_setup_writes_timestamped_lines_to_run_log(tmp_path: Path, name: str) -> None:
    logger = Logger.setup(name, tmp_path, "INFO")

    logger.info("epoch %d done", 3)
    logger.debug("below the level")

    lines = _log_lines(tmp_path)
    assert len(lines) == 1
    match = LINE.match(lines[0])
    assert match is not None, lines[0]
    assert match["level"] == "INFO"
    assert match["name"] == name
    assert match["msg"] == "epoch 3 done"


def test_run_log_is_utf8(tmp_path: Path, name: str) -> None:
    logger = Logger.setup(name, tmp_path, "INFO")

    logger.info("données ✓ 数据")

    assert "données ✓ 数据" in (tmp_path / LOG_FILE_NAME).read_bytes().decode("utf-8")


def test_console_output_goes_to_stderr_with_markup_left_alone(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = Logger.setup(name, tmp_path, "INFO")

    logger.warning("[bold]x[/bold]")

    captured = capsys.readouterr()
    assert "[bold]x[/bold]" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    ("level", "expected"),
    [("INFO", logging.INFO), ("info", logging.INFO), (" Debug ", logging.DEBUG), (30, 30)],
)
def test_level_accepts_names_in_any_case_and_integers(
    tmp_path: Path, name: str, level: str | int, expected: int
) -> None:
    logger = Logger.setup(name, tmp_path, level)

    assert logger.level == expected


@pytest.mark.parametrize("level", ["LOUD", "", -5, True])
def test_unknown_level_is_rejected_and_the_logger_left_unchanged(
    tmp_path: Path, name: str, level: str | int
) -> None:
    logger = logging.getLogger(name)

    with pytest.raises(ValueError, match="log level") as caught:
        Logger.setup(name, tmp_path, level)

    assert repr(level) in str(caught.value)
    assert logger.handlers == []
    assert logger.propagate is True
    assert not (tmp_path / LOG_FILE_NAME).exists()


def test_propagation_is_turned_off(tmp_path: Path, name: str) -> None:
    logger = Logger.setup(name, tmp_path, "INFO")

    assert logger.propagate is False


def test_second_setup_does_not_duplicate_lines(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Logger.setup(name, tmp_path, "INFO")
    logger = Logger.setup(name, tmp_path, "INFO")

    logger.info("exactly once")

    assert _log_lines(tmp_path)[-1].endswith("exactly once")
    assert sum("exactly once" in line for line in _log_lines(tmp_path)) == 1
    assert capsys.readouterr().err.count("exactly once") == 1
    assert len(logger.handlers) == 2


def test_second_setup_with_another_dir_moves_the_file_output(tmp_path: Path, name: str) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    Logger.setup(name, first, "INFO")
    logger = Logger.setup(name, second, "INFO")

    logger.info("goes to the second run")

    assert _log_lines(first) == []
    assert _log_lines(second)[0].endswith("goes to the second run")


def test_logger_snapshot_undoes_setup_and_keeps_user_handlers(tmp_path: Path, name: str) -> None:
    logger = logging.getLogger(name)
    user_stream = io.StringIO()
    user_handler = logging.StreamHandler(user_stream)
    logger.addHandler(user_handler)
    logger.setLevel(logging.WARNING)
    before = LoggerSnapshot.capture(name)
    Logger.setup(name, tmp_path, "DEBUG")
    Logger.setup(name, tmp_path, "INFO")
    ours = [h for h in logger.handlers if h is not user_handler]

    before.restore()
    logger.warning("after the undo")

    assert logger.handlers == [user_handler]
    assert logger.level == logging.WARNING
    assert logger.propagate is True
    assert "after the undo" in user_stream.getvalue()
    assert not any("after the undo" in line for line in _log_lines(tmp_path))
    file_handlers = [h for h in ours if isinstance(h, logging.FileHandler)]
    assert len(file_handlers) == 1
    assert file_handlers[0].stream is None  # closed


def test_repeated_setup_replaces_only_its_own_handlers(tmp_path: Path, name: str) -> None:
    logger = logging.getLogger(name)
    user_handler = logging.NullHandler()
    logger.addHandler(user_handler)
    first = Logger.setup(name, tmp_path, "DEBUG")
    replaced = [h for h in first.handlers if h is not user_handler]

    Logger.setup(name, tmp_path, "WARNING")

    assert logger.handlers[0] is user_handler
    assert len(logger.handlers) == 3
    assert not set(replaced) & set(logger.handlers)
    assert all(h.stream is None for h in replaced if isinstance(h, logging.FileHandler))
    assert logger.level == logging.WARNING


def test_root_logger_is_never_touched(tmp_path: Path, name: str) -> None:
    root = logging.getLogger()
    root_handlers, root_level = list(root.handlers), root.level
    seen = io.StringIO()
    catcher = logging.StreamHandler(seen)
    root.addHandler(catcher)
    before = LoggerSnapshot.capture(name)
    try:
        logger = Logger.setup(name, tmp_path, "DEBUG")
        logger.error("only in the run's handlers")
        before.restore()
    finally:
        root.removeHandler(catcher)

    assert seen.getvalue() == ""
    assert root.handlers == root_handlers
    assert root.level == root_level


def test_empty_name_is_refused_so_the_root_logger_stays_alone(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root logger"):
        Logger.setup("", tmp_path, "INFO")


def test_missing_log_dir_is_a_clear_error(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "run" / "logs"

    with pytest.raises(FileNotFoundError, match="does not exist") as caught:
        Logger.setup(name, missing, "INFO")

    assert str(missing) in str(caught.value)
    assert not missing.exists()
    assert logging.getLogger(name).handlers == []


def test_log_dir_that_is_a_file_is_a_clear_error(tmp_path: Path, name: str) -> None:
    file = tmp_path / "logs"
    file.write_text("")

    with pytest.raises(NotADirectoryError) as caught:
        Logger.setup(name, file, "INFO")

    assert str(file) in str(caught.value)


def test_console_lines_are_not_wrapped_when_stderr_is_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = LoggerSnapshot.capture("orchestrator_fsm.test_plain_console")
    logger = Logger.setup("orchestrator_fsm.test_plain_console", tmp_path, "INFO")
    try:
        long_message = "x" * 300
        logger.info(long_message)
        assert f"INFO     {long_message}\n" in capsys.readouterr().err
    finally:
        before.restore()
