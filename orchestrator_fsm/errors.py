"""The error hierarchy: every error the package raises on purpose is an OrchestratorError."""

from __future__ import annotations

import signal
from datetime import datetime, timezone

__all__ = [
    "ConfigError",
    "DeviceError",
    "EntryPointError",
    "GraphvizNotFoundError",
    "InfrastructureError",
    "LifecycleError",
    "LockContendedError",
    "OrchestratorError",
    "RunInterrupted",
]


class OrchestratorError(Exception):
    """Base class of every error raised on purpose by orchestrator-fsm."""


class ConfigError(OrchestratorError, ValueError):
    """A recipe, a mapping or an override does not describe a valid configuration.

    ``problems`` holds one ``(dotted_path, message)`` pair per bad field, so that
    callers (the CLI's ``validate``) can show all of them; ``source`` is the file
    the config came from, or ``None`` for in-memory data. ``overridden`` holds the
    paths of problems whose value an override (``--set``) gave, not the file.
    """

    def __init__(
        self,
        message: str,
        *,
        problems: list[tuple[str, str]] | None = None,
        source: str | None = None,
        overridden: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(message)
        self.problems: list[tuple[str, str]] = list(problems or [])
        self.source = source
        self.overridden = overridden


class LifecycleError(OrchestratorError, RuntimeError):
    """The lifecycle was driven in a way the state machine does not allow."""


class InfrastructureError(OrchestratorError):
    """An OS-level resource (the run lock) could not be acquired or released."""


class LockContendedError(InfrastructureError):
    """Another live run holds the lock; ``holder`` is what it wrote into the lock file."""

    def __init__(self, message: str, *, holder: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.holder: dict[str, object] = dict(holder or {})


class DeviceError(OrchestratorError):
    """The requested compute device does not exist or cannot be used."""


class EntryPointError(OrchestratorError):
    """An ``--entry`` spec does not name a callable that can be imported."""


class GraphvizNotFoundError(OrchestratorError):
    """SVG output was asked for but Graphviz's ``dot`` program is not installed."""


class RunInterrupted(KeyboardInterrupt):
    """A termination signal (SIGINT, SIGTERM, SIGHUP) ended a live run.

    A ``KeyboardInterrupt``, so code that handles Ctrl-C handles it too; ``signum``
    says which signal it was, and the message is its name; ``received_at`` is when the
    process took it (its handler ran), which tells a job-wide signal from a rank's own.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.received_at = datetime.now(timezone.utc)
