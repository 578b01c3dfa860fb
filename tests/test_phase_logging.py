from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator_fsm._process import LoggerSnapshot
from orchestrator_fsm.errors import LifecycleError
from orchestrator_fsm.layout import RunPaths
from orchestrator_fsm.phases import logging as logging_phase
from orchestrator_fsm.phases.logging import LOG_FILE, Logger, log_file_name
from orchestrator_fsm.run_context import Dependencies, RunContext
from orchestrator_fsm.run_log import LOGGER_NAME
from orchestrator_fsm.seeds import SeedTree

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 \[rank(?P<rank>\d+)\] "
    r"(?P<level>[A-Z]+) +(?P<name>\S+): (?P<msg>.*)$"
)


@pytest.fixture
def name() -> Iterator[str]:
    """A fresh logger name per test, put back afterwards whatever the test did."""
    logger_name = f"orchestrator_fsm.test_logging.{uuid.uuid4().hex}"
    snapshot = LoggerSnapshot.capture(logger_name)
    yield logger_name
    snapshot.restore()


def _log_lines(log_dir: Path) -> list[str]:
    return (log_dir / LOG_FILE).read_text(encoding="utf-8").splitlines()


def test_setup_writes_timestamped_lines_to_run_log(tmp_path: Path, name: str) -> None:
    logger = Logger.setup(name, tmp_path, "INFO")

    logger.info("epoch %d done", 3)
    logger.debug("below the level")

    lines = _log_lines(tmp_path)
    assert len(lines) == 1
    match = LINE.match(lines[0])
    assert match is not None, lines[0]
    assert match["rank"] == "0"
    assert match["level"] == "INFO"
    assert match["name"] == name
    assert match["msg"] == "epoch 3 done"


def test_run_log_is_utf8(tmp_path: Path, name: str) -> None:
    logger = Logger.setup(name, tmp_path, "INFO")

    logger.info("données ✓ 数据")

    assert "données ✓ 数据" in (tmp_path / LOG_FILE).read_bytes().decode("utf-8")


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
    assert not (tmp_path / LOG_FILE).exists()


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


def test_rank_zero_keeps_run_log_and_other_ranks_get_their_own_file() -> None:
    assert log_file_name(0) == LOG_FILE == "run.log"
    assert log_file_name(1) == "rank1.log"
    assert log_file_name(12) == "rank12.log"
    for bad in (-1, True, "1"):
        with pytest.raises(ValueError, match="rank"):
            log_file_name(bad)  # type: ignore[arg-type]


def test_rank_n_writes_rank_n_log_with_the_rank_on_every_line(tmp_path: Path, name: str) -> None:
    logger = Logger.setup(name, tmp_path, "DEBUG", rank=3)

    logger.debug("shard ready")
    logger.warning("slow disk")

    assert not (tmp_path / LOG_FILE).exists()
    lines = (tmp_path / "rank3.log").read_text(encoding="utf-8").splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [(m["rank"], m["level"], m["msg"]) for m in matches if m] == [
        ("3", "DEBUG", "shard ready"),
        ("3", "WARNING", "slow disk"),
    ]


def test_two_ranks_sharing_one_logs_folder_never_share_a_file(tmp_path: Path) -> None:
    names = [f"orchestrator_fsm.test_logging.{uuid.uuid4().hex}" for _ in range(2)]
    snapshot = LoggerSnapshot.capture(*names)
    try:
        for rank, logger_name in enumerate(names):
            Logger.setup(logger_name, tmp_path, "INFO", rank=rank).info("hello from %d", rank)
    finally:
        snapshot.restore()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank1.log", "run.log"]
    assert "[rank0] INFO" in (tmp_path / "run.log").read_text(encoding="utf-8")
    assert "[rank1]" not in (tmp_path / "run.log").read_text(encoding="utf-8")
    assert "hello from 1" in (tmp_path / "rank1.log").read_text(encoding="utf-8")


def test_other_ranks_print_only_warnings_and_errors_on_the_console(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = Logger.setup(name, tmp_path, "INFO", rank=1)

    logger.info("epoch 1 done")
    logger.warning("loss is nan")
    logger.error("out of memory")

    err = capsys.readouterr().err.splitlines()
    assert err == ["[rank1] WARNING  loss is nan", "[rank1] ERROR    out of memory"]
    in_file = (tmp_path / "rank1.log").read_text(encoding="utf-8")
    assert "epoch 1 done" in in_file  # the console leaves it out, the file keeps it


def test_rank_zero_prints_at_the_configured_level_with_its_rank(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = Logger.setup(name, tmp_path, "INFO")

    logger.info("epoch 1 done")

    assert capsys.readouterr().err.splitlines() == ["[rank0] INFO     epoch 1 done"]


def test_a_higher_configured_level_also_holds_on_other_ranks(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = Logger.setup(name, tmp_path, "ERROR", rank=2)

    logger.warning("below the run's level")
    logger.error("shown")

    assert capsys.readouterr().err.splitlines() == ["[rank2] ERROR    shown"]


def test_a_warning_is_printed_once_even_with_a_root_handler_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A child logger (as the demo's "orchestrator_fsm.demo") reaches the run's handlers
    # and stops there: neither a root handler nor logging's last resort prints it again.
    parent = f"orchestrator_fsm.test_logging.{uuid.uuid4().hex}"
    root = logging.getLogger()
    snapshot = LoggerSnapshot.capture(parent, "")
    root.addHandler(logging.StreamHandler())  # stderr, as logging.basicConfig does
    try:
        Logger.setup(parent, tmp_path, "INFO", rank=1)
        logging.getLogger(f"{parent}.demo").warning("gradient overflow")
    finally:
        snapshot.restore()

    assert capsys.readouterr().err.count("gradient overflow") == 1
    assert (tmp_path / "rank1.log").read_text(encoding="utf-8").count("gradient overflow") == 1


def test_rank_n_setup_is_undone_by_the_snapshot(tmp_path: Path, name: str) -> None:
    logger = logging.getLogger(name)
    user_handler = logging.NullHandler()
    logger.addHandler(user_handler)
    before = LoggerSnapshot.capture(name)
    Logger.setup(name, tmp_path, "INFO", rank=1)
    ours = [h for h in logger.handlers if h is not user_handler]

    before.restore()

    assert logger.handlers == [user_handler]
    assert logger.propagate is True
    assert all(h.stream is None for h in ours if isinstance(h, logging.FileHandler))


def _unused(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the logging step calls only the log initializer")


def run_on_rank(
    tmp_path: Path,
    make_config: Callable[..., Any],
    rank: int,
    log_initializer: Callable[..., Any] = Logger.setup,
) -> RunContext:
    """A RunContext of rank ``rank`` of 2 whose run directory is ``tmp_path/run``."""
    root = tmp_path / "run"
    (root / "logs").mkdir(parents=True)
    deps = Dependencies(
        infra=_unused,  # type: ignore[arg-type]
        reporter=_unused,  # type: ignore[arg-type]
        time_tracker=_unused,  # type: ignore[arg-type]
        audit_saver=_unused,  # type: ignore[arg-type]
        log_initializer=log_initializer,
        seed_setter=_unused,
        thread_applier=_unused,
        system_configurator=_unused,
        static_dir_setup=_unused,
        device_resolver=_unused,
    )
    return RunContext(
        cfg=make_config(),
        deps=deps,
        rank=rank,
        local_rank=rank,
        world_size=2,
        seed_tree=SeedTree(1234, rank, 2),
        paths=RunPaths.from_root(root),
    )


def test_step_on_rank_one_logs_to_rank1_log_and_its_undo_restores_the_loggers(
    tmp_path: Path, make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_on_rank(tmp_path, make_config, rank=1)
    package = logging.getLogger(LOGGER_NAME)
    root = logging.getLogger()
    before = (list(package.handlers), package.level, package.propagate, list(root.handlers))

    undo = logging_phase.step(run)
    assert run.logger is package
    run.log.info("joined rank 0's run")
    run.log.warning("this node is slow")
    undo()

    assert run.logger is None
    after = (list(package.handlers), package.level, package.propagate, list(root.handlers))
    assert after == before
    logs = tmp_path / "run" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["rank1.log", "stdout.log"]
    lines = (logs / "rank1.log").read_text(encoding="utf-8").splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "INFO     orchestrator_fsm: joined rank 0's run",
        "WARNING  orchestrator_fsm: this node is slow",
    ]
    assert all("[rank1]" in line for line in lines)
    assert capsys.readouterr().err.splitlines() == ["[rank1] WARNING  this node is slow"]


def test_step_passes_the_rank_to_initializers_that_take_it(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    calls: list[dict[str, Any]] = []

    def with_rank(name: str, log_dir: Path, level: str, *, rank: int) -> logging.Logger:
        calls.append({"rank": rank})
        return logging.getLogger(name)

    logging_phase.step(run_on_rank(tmp_path, make_config, rank=1, log_initializer=with_rank))()

    assert calls == [{"rank": 1}]


def test_step_calls_a_reference_initializer_without_the_rank(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    calls: list[tuple[str, Path, str]] = []

    def reference(name: str, log_dir: Path, level: str) -> logging.Logger:
        calls.append((name, log_dir, level))
        return logging.getLogger(name)

    logging_phase.step(run_on_rank(tmp_path, make_config, rank=1, log_initializer=reference))()

    assert calls == [(LOGGER_NAME, tmp_path / "run" / "logs", "INFO")]


def test_step_still_refuses_an_initializer_returning_none_on_other_ranks(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    run = run_on_rank(tmp_path, make_config, rank=1, log_initializer=lambda **_: None)

    with pytest.raises(LifecycleError, match="returned None"):
        logging_phase.step(run)
    assert run.logger is None


def test_console_level_apart_from_the_file_level(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = Logger.setup(name, tmp_path, "INFO", console_level="warning")

    logger.info("only in the file")
    logger.warning("in both")

    assert capsys.readouterr().err.splitlines() == ["[rank0] WARNING  in both"]
    assert [line.rsplit(": ", 1)[1] for line in _log_lines(tmp_path)] == [
        "only in the file",
        "in both",
    ]


def test_a_console_below_the_file_level_lowers_the_logger_but_not_the_file(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = Logger.setup(name, tmp_path, "WARNING", console_level="DEBUG")

    logger.debug("only on the console")

    assert logger.level == logging.DEBUG
    assert capsys.readouterr().err.splitlines() == ["[rank0] DEBUG    only on the console"]
    assert _log_lines(tmp_path) == []


def test_step_on_rank_one_sends_user_loggers_to_rank1_log_while_live(
    tmp_path: Path, make_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_on_rank(tmp_path, make_config, rank=1)
    user = logging.getLogger(f"mytrain{uuid.uuid4().hex}")

    undo = logging_phase.step(run)
    user.info("shard 1 loaded")
    user.warning("shard 1 is small")
    undo()
    user.warning("after the run")

    lines = (tmp_path / "run" / "logs" / "rank1.log").read_text(encoding="utf-8").splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        f"INFO     {user.name}: shard 1 loaded",
        f"WARNING  {user.name}: shard 1 is small",
    ]
    err = capsys.readouterr().err
    assert err.count("shard 1 is small") == 1
    assert "shard 1 loaded" not in err


def test_step_passes_the_console_level_to_initializers_that_take_it(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    calls: list[str] = []

    def with_console(name: str, log_dir: Path, level: str, *, console_level: str) -> Any:
        calls.append(console_level)
        return logging.getLogger(name)

    run = run_on_rank(tmp_path, make_config, rank=1, log_initializer=with_console)
    logging_phase.step(run)()

    assert calls == ["INFO"]


def test_a_tee_that_cannot_open_its_file_leaves_nothing_behind(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    run = run_on_rank(tmp_path, make_config, rank=0)
    run.cfg = make_config(telemetry={"capture_stdout": True})
    (tmp_path / "run" / "logs" / logging_phase.STDOUT_LOG).mkdir()
    root, package = logging.getLogger(), logging.getLogger(LOGGER_NAME)
    before = (list(root.handlers), root.level, list(package.handlers), package.propagate)
    showwarning, streams = warnings.showwarning, (sys.stdout, sys.stderr)

    with pytest.raises(IsADirectoryError):
        logging_phase.step(run)

    assert (list(root.handlers), root.level, list(package.handlers), package.propagate) == before
    assert warnings.showwarning is showwarning
    assert (sys.stdout, sys.stderr) == streams
    assert run.logger is None


_BATCH_RUN = """
import sys, tempfile
from orchestrator_fsm import Config, RootOrchestrator
out = tempfile.mkdtemp()
cfg = Config.from_dict({
    "dataset": {"name": "d"}, "architecture": {"name": "a"}, "training": {"seed": 1},
    "hardware": {"device": "cpu"}, "telemetry": {"output_dir": out},
    "infrastructure": {"lock": {"path": out + "/run.lock"}},
})
with RootOrchestrator(cfg) as orch:
    orch.log_environment_report()
    orch.run_logger.info("inside the run")
print(sorted(m for m in sys.modules if m == "rich" or m.startswith("rich.")))
"""


@pytest.mark.slow
def test_a_run_whose_stderr_is_not_a_terminal_never_imports_rich(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _BATCH_RUN],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert "inside the run" in done.stderr  # the console handler wrote, plainly
    assert done.stdout.strip() == "[]"
