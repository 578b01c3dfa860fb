"""In-memory stand-ins for the injectable phases, recording how they were called."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch

FAKE_ENV_VAR = "ORCHESTRATOR_FSM_TEST_FAKE"


class StepFailure(RuntimeError):
    """Raised by a fake phase that was told to fail."""


class Calls:
    """Shared call log and failure switchboard for one orchestrator's fakes."""

    def __init__(self) -> None:
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, BaseException] = {}

    def hit(self, call: str, /, **kwargs: Any) -> None:
        self.log.append((call, kwargs))
        if call in self.fail:
            raise self.fail.pop(call)

    def names(self) -> list[str]:
        return [name for name, _ in self.log]


class FakeInfra:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.held = False
        self.run_id: str | None = None

    def bind_run(self, run_id: str) -> None:
        self.run_id = run_id

    def prepare_environment(self, cfg: Any, logger: logging.Logger | None = None) -> None:
        self.calls.hit("prepare_environment", cfg=cfg, logger=logger)
        self.held = True

    def release_resources(self, cfg: Any, logger: logging.Logger | None = None) -> None:
        # Like the real manager: the lock is gone even when releasing reports an error.
        self.held = False
        self.calls.hit("release_resources", cfg=cfg, logger=logger)


class FakeReporter:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def log_initial_status(self, **kwargs: Any) -> None:
        self.calls.hit("log_initial_status", **kwargs)


class FakeTimeTracker:
    def __init__(self) -> None:
        self.started = 0
        self.stopped = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> float:
        self.stopped += 1
        return 0.0

    @property
    def elapsed_seconds(self) -> float:
        return 0.0


class FakeAuditSaver:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def save_config(self, data: Any, yaml_path: Path) -> None:
        self.calls.hit("save_config", data=data, yaml_path=yaml_path)

    def dump_requirements(self, path: Path) -> None:
        self.calls.hit("dump_requirements", path=path)

    def dump_git_info(self, path: Path) -> None:
        self.calls.hit("dump_git_info", path=path)


def fake_dependencies(calls: Calls) -> dict[str, Any]:
    """All eleven injectables of RootOrchestrator as fakes that change real process
    state (so restoration can be checked) but touch no files of their own."""

    def seed_setter(seed: int, **kwargs: Any) -> None:
        calls.hit("seed_setter", seed=seed, **kwargs)
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ[FAKE_ENV_VAR] = "seeded"

    def thread_applier(num_workers: int) -> int:
        calls.hit("thread_applier", num_workers=num_workers)
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
        return 1

    def system_configurator() -> None:
        calls.hit("system_configurator")

    def static_dir_setup() -> None:
        calls.hit("static_dir_setup")

    def log_initializer(name: str, log_dir: Path, level: str) -> logging.Logger:
        calls.hit("log_initializer", name=name, log_dir=log_dir, level=level)
        logger = logging.getLogger(name)
        logger.addHandler(logging.StreamHandler(io.StringIO()))
        logger.setLevel(logging.DEBUG)
        return logger

    def device_resolver(device_str: str, local_rank: int) -> torch.device:
        calls.hit("device_resolver", device_str=device_str, local_rank=local_rank)
        return torch.device("cpu")

    return {
        "infra_manager": FakeInfra(calls),
        "reporter": FakeReporter(calls),
        "time_tracker": FakeTimeTracker(),
        "audit_saver": FakeAuditSaver(calls),
        "log_initializer": log_initializer,
        "seed_setter": seed_setter,
        "thread_applier": thread_applier,
        "system_configurator": system_configurator,
        "static_dir_setup": static_dir_setup,
        "device_resolver": device_resolver,
    }


def process_fingerprint() -> dict[str, Any]:
    """What a run may change in the process and must put back (RNG state aside)."""
    package_logger = logging.getLogger("orchestrator_fsm")
    root = logging.getLogger()
    return {
        "threads": torch.get_num_threads(),
        "interop": torch.get_num_interop_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
        "tf32": (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        ),
        "env": dict(os.environ),
        "handlers": (list(package_logger.handlers), list(root.handlers)),
        "levels": (package_logger.level, root.level, package_logger.propagate),
    }


def pretend_rank_zero_is_ready(cfg: Any, launch: Any, host_pid: int | None = None) -> Path:
    """Make, by hand, what rank 0 of ``launch``'s job leaves for the other ranks: its run
    directory with a READY record and the job's entry naming it. Returns the directory."""
    import json
    import os
    import socket
    from datetime import datetime, timezone

    from orchestrator_fsm.layout import RUN_FILE, RunPaths, job_entry_file
    from orchestrator_fsm.lifecycle.job_index import JobEntry, job_key

    key = job_key(launch, cfg.config_hash())
    assert key is not None, "the launch names no job"
    paths = RunPaths.create(
        cfg.telemetry.output_dir, cfg.dataset.name, cfg.architecture.name, cfg.config_hash()
    )
    now = datetime.now(timezone.utc)
    record = {
        "run_id": paths.run_id,
        "status": "running",
        "state": "ready",
        "rank": 0,
        "pid": host_pid or os.getpid(),
        "host": socket.gethostname(),
        "restart_count": launch.restart_count,
        "attempts": [{"number": 1, "restart_count": launch.restart_count}],
    }
    (paths.root / RUN_FILE).write_text(json.dumps(record), encoding="utf-8")
    entry = JobEntry(
        job=key,
        restart_count=launch.restart_count,
        written_at=now,
        root=paths.root,
        run_id=paths.run_id,
        attempt=1,
        config_hash=cfg.config_hash(),
    )
    where = job_entry_file(cfg.telemetry.output_dir, key)
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text(json.dumps(entry.to_json()), encoding="utf-8")
    return paths.root
