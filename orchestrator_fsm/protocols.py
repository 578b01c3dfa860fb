"""What the orchestrator needs from the objects it is given (structural types)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from orchestrator_fsm.config import Config
    from orchestrator_fsm.git_state import GitState
    from orchestrator_fsm.layout import RunPaths

__all__ = [
    "AuditSaverProtocol",
    "InfraManagerProtocol",
    "ReporterProtocol",
    "TimeTrackerProtocol",
]


@runtime_checkable
class InfraManagerProtocol(Protocol):
    """Guards the run with OS-level resources (the run lock) and releases them."""

    def prepare_environment(self, cfg: Config, logger: logging.Logger | None = None) -> None: ...

    def release_resources(self, cfg: Config, logger: logging.Logger | None = None) -> None: ...


@runtime_checkable
class ReporterProtocol(Protocol):
    """Writes the phase 7 environment report."""

    def log_initial_status(
        self,
        logger_instance: logging.Logger,
        cfg: Config,
        paths: RunPaths,
        device: Any,
        applied_threads: int,
        num_workers: int,
    ) -> None: ...


@runtime_checkable
class TimeTrackerProtocol(Protocol):
    """Measures the wall time of the whole run; ``stop()`` returns the seconds measured."""

    def start(self) -> None: ...

    def stop(self) -> float: ...

    @property
    def elapsed_seconds(self) -> float: ...


@runtime_checkable
class AuditSaverProtocol(Protocol):
    """Persists the run manifest: config, dependency snapshot, git state."""

    # ``... | None``: the default saver hands back what it wrote (the file, the
    # distribution lines, the git state); savers returning None still satisfy the
    # protocol, and what they left on disk is read instead.
    def save_config(self, data: Any, yaml_path: Path) -> Path | None: ...

    def dump_requirements(self, path: Path) -> Sequence[str] | None: ...

    def dump_git_info(self, path: Path) -> GitState | None: ...
