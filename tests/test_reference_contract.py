"""Code written against the reference orchestrator's injection points runs unchanged.

Each fake here accepts exactly the call shape the reference uses (keyword-only where
the reference passes a keyword), so a call made any other way fails the test.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import Calls, fake_dependencies

from orchestrator_fsm.errors import DeviceError, LifecycleError
from orchestrator_fsm.lifecycle.table import LifecycleState
from orchestrator_fsm.orchestrator import RootOrchestrator

ConfigFactory = Callable[..., Any]


class StrictAuditSaver:
    """Accepts only ``save_config(data=..., yaml_path=...)`` and positional paths."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def save_config(self, *, data: Any, yaml_path: Path) -> Path:
        self.calls.append(f"save_config:{yaml_path.name}")
        return yaml_path

    def dump_requirements(self, path: Path, /) -> None:
        self.calls.append(f"dump_requirements:{path.name}")

    def dump_git_info(self, path: Path, /) -> None:
        self.calls.append(f"dump_git_info:{path.name}")


class StrictInfra:
    """Accepts only ``(cfg, logger=...)`` with the logger given by keyword."""

    def __init__(self, release_error: BaseException | None = None) -> None:
        self.loggers: list[logging.Logger | None] = []
        self.released = 0
        self._release_error = release_error

    def prepare_environment(self, cfg: Any, /, *, logger: logging.Logger | None) -> None:
        self.loggers.append(logger)

    def release_resources(self, cfg: Any, /, *, logger: logging.Logger | None) -> None:
        self.released += 1
        if self._release_error is not None:
            raise self._release_error


class FalsyReporter:
    """An injected object whose truth value is False must still be the one used."""

    def __init__(self) -> None:
        self.reports = 0

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def log_initial_status(self, **kwargs: Any) -> None:
        self.reports += 1


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.was_closed = False

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        self.was_closed = True
        super().close()


def build(make_config: ConfigFactory, **overrides: Any) -> RootOrchestrator:
    deps = fake_dependencies(Calls())
    deps.update(overrides)
    return RootOrchestrator(make_config(), rank=0, local_rank=0, **deps)


def test_audit_saver_and_infra_are_called_as_the_reference_calls_them(
    make_config: ConfigFactory,
) -> None:
    saver, infra = StrictAuditSaver(), StrictInfra()
    with build(make_config, audit_saver=saver, infra_manager=infra) as orch:
        assert infra.loggers == [orch.run_logger]
    assert saver.calls == [
        "save_config:config.yaml",
        "dump_requirements:requirements.txt",
        "dump_git_info:git_info.txt",
    ]
    assert infra.released == 1


def test_an_injected_object_that_is_falsy_is_still_used(make_config: ConfigFactory) -> None:
    reporter = FalsyReporter()
    with build(make_config, reporter=reporter) as orch:
        assert orch.reporter is reporter
        orch.log_environment_report()
    assert reporter.reports == 1


def test_cleanup_closes_every_handler_of_the_returned_logger_whatever_its_name(
    make_config: ConfigFactory,
) -> None:
    custom = logging.getLogger("someone_elses_logger")
    handlers = [RecordingHandler(), RecordingHandler()]

    def log_initializer(name: str, log_dir: Path, level: str) -> logging.Logger:
        for handler in handlers:
            custom.addHandler(handler)
        return custom

    with build(make_config, log_initializer=log_initializer) as orch:
        assert orch.run_logger is custom
        assert custom.handlers == handlers
    assert custom.handlers == []
    assert [handler.was_closed for handler in handlers] == [True, True]
    assert orch.run_logger is None


def test_a_log_initializer_returning_none_stops_the_run_and_rolls_back(
    make_config: ConfigFactory,
) -> None:
    infra = StrictInfra()
    orch = build(make_config, log_initializer=lambda **_: None, infra_manager=infra)
    with pytest.raises(LifecycleError, match="log_initializer returned None"):
        orch.__enter__()
    assert orch.state is LifecycleState.FAILED
    assert infra.loggers == []  # the lock step never ran
    assert orch.paths is not None
    assert '"status": "failed"' in (orch.paths.root / "run.json").read_text()


def test_a_failing_lock_release_is_logged_and_the_rest_of_cleanup_runs(
    make_config: ConfigFactory,
) -> None:
    infra = StrictInfra(release_error=OSError("lock file vanished"))
    stream = io.StringIO()

    def log_initializer(name: str, log_dir: Path, level: str) -> logging.Logger:
        logger = logging.getLogger(name)
        logger.addHandler(logging.StreamHandler(stream))
        logger.setLevel(logging.INFO)
        return logger

    orch = build(make_config, infra_manager=infra, log_initializer=log_initializer)
    with orch:
        pass
    assert "Failed to release system lock: lock file vanished" in stream.getvalue()
    assert orch.state is LifecycleState.CLEANED
    assert orch.run_logger is None  # the logging undo still ran after the failed release
    assert logging.getLogger("orchestrator_fsm").handlers == []
    assert "undo of acquire_lock failed" in str(orch.machine.history[-1].error)


def test_reinitialising_after_cleanup_says_so_as_the_reference_does(
    make_config: ConfigFactory,
) -> None:
    orch = build(make_config)
    with orch:
        pass
    with pytest.raises(LifecycleError, match=r"^Cannot re-initialize after cleanup"):
        orch.initialize_core_services()


def test_device_failure_text_begins_as_the_reference_does(make_config: ConfigFactory) -> None:
    def broken_resolver(device_str: str, local_rank: int) -> torch.device:
        raise RuntimeError("driver crashed")

    orch = build(make_config, device_resolver=broken_resolver)
    with pytest.raises(DeviceError) as caught:
        orch.__enter__()
    assert str(caught.value).startswith(
        "Device resolution failed at runtime (config requested 'cpu'): driver crashed"
    )
    assert isinstance(caught.value.__cause__, RuntimeError)


# -- the reference's rank functions and extension points (issue 22) -------------------


def clear_launchers(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS

    for name in LAUNCHER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (0, 0, 1)),
        ({"RANK": "3"}, (3, 0, 1)),
        ({"LOCAL_RANK": "2"}, (0, 2, 1)),
        ({"WORLD_SIZE": "4"}, (0, 0, 4)),
        ({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}, (1, 1, 2)),
    ],
    ids=["nothing", "RANK=3 alone", "LOCAL_RANK=2 alone", "WORLD_SIZE=4 alone", "all three"],
)
def test_the_rank_functions_read_the_environment_as_the_reference_does(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: tuple[int, int, int]
) -> None:
    from orchestrator_fsm import get_local_rank, get_rank, get_world_size

    clear_launchers(monkeypatch, **env)
    assert (get_rank(), get_local_rank(), get_world_size()) == expected


def test_a_rank_alone_takes_the_reference_shortcut(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The SPEC's acceptance case: rank=1 in one process, sharing nothing with a rank 0.
    clear_launchers(monkeypatch)
    cfg = make_config()
    device_calls: list[dict[str, Any]] = []

    def resolver(*, device_str: str, local_rank: int) -> torch.device:
        device_calls.append({"device_str": device_str, "local_rank": local_rank})
        return torch.device("cpu")

    with caplog.at_level(logging.WARNING):
        orch = RootOrchestrator(cfg, rank=1, device_resolver=resolver)
        with orch as entered:
            assert entered.paths is None
            assert entered.initialize_core_services() is None
            assert entered.get_device() == torch.device("cpu")
            entered.log_environment_report()
    assert device_calls == [{"device_str": "cpu", "local_rank": 0}]
    assert orch.state is LifecycleState.CLEANED
    assert not Path(cfg.telemetry.output_dir).exists()
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "paths is None" in warning.getMessage() and "\n" not in warning.getMessage()


def test_a_subclass_overriding_cleanup_and_initialize_is_honoured(
    make_config: ConfigFactory,
) -> None:
    seen: list[str] = []

    class Mine(RootOrchestrator):
        def initialize_core_services(self) -> Any:
            seen.append("initialize")
            return super().initialize_core_services()

        def cleanup(self) -> None:
            seen.append(f"cleanup in {self.state.value}")
            super().cleanup()

    deps = fake_dependencies(Calls())
    with Mine(make_config(), rank=0, local_rank=0, **deps) as orch:
        seen.append("body")
    assert seen == ["initialize", "body", "cleanup in ready"]
    assert orch.state is LifecycleState.CLEANED


def test_an_instance_attribute_cleanup_is_called_and_the_run_still_ends(
    make_config: ConfigFactory,
) -> None:
    orch = build(make_config)
    called: list[str] = []
    orch.cleanup = lambda: called.append("mine")  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="boom"), orch:
        raise ValueError("boom")
    assert called == ["mine"]
    # An override that does not call the package's cleanup still leaves a final record.
    assert orch.state is LifecycleState.CLEANED
    assert orch.record is not None and orch.record.status == "failed"


def test_an_overridden_cleanup_runs_when_initialisation_fails(
    make_config: ConfigFactory,
) -> None:
    seen: list[str] = []

    class Mine(RootOrchestrator):
        def cleanup(self) -> None:
            seen.append("cleanup")
            super().cleanup()

    def broken_resolver(device_str: str, local_rank: int) -> torch.device:
        raise RuntimeError("no such device")

    deps = fake_dependencies(Calls())
    deps["device_resolver"] = broken_resolver
    orch = Mine(make_config(), rank=0, local_rank=0, **deps)
    with pytest.raises(DeviceError):
        orch.__enter__()
    assert seen == ["cleanup"]
    assert orch.state is LifecycleState.FAILED
