"""Capture and restore the bits of process-wide state that lifecycle steps change."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeVar

__all__ = ["EnvSnapshot", "LoggerSnapshot", "Restorable", "undoable"]

T = TypeVar("T")


class EnvSnapshot:
    """The values (or absence) of some environment variables at one moment.

    ``EnvSnapshot.capture(names)`` remembers them; ``restore()`` puts every one back,
    deleting those that did not exist. Used by every step that sets variables, so that
    a finished run leaves ``os.environ`` as it found it.
    """

    __slots__ = ("_saved",)

    def __init__(self, saved: Mapping[str, str | None]) -> None:
        self._saved = dict(saved)

    @classmethod
    def capture(cls, names: Iterable[str]) -> EnvSnapshot:
        return cls({name: os.environ.get(name) for name in names})

    @classmethod
    def changes_since(cls, before: Mapping[str, str]) -> EnvSnapshot:
        """A snapshot that undoes every change made to ``os.environ`` since ``before``
        (a copy of it taken earlier): changed and deleted variables get their old value
        back, added ones are removed."""
        now = os.environ
        changed = {name for name in before if now.get(name) != before[name]}
        changed.update(name for name in now if name not in before)
        return cls({name: before.get(name) for name in changed})

    def restore(self) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class LoggerSnapshot:
    """Handlers, level, propagate flag and disabled flag of some loggers at one moment.

    ``restore()`` detaches and closes every handler added since the capture, puts back
    any handler that was removed, and resets level, propagation and ``disabled``. It
    works whatever code changed the loggers, so an injected log initializer is undone
    as completely as the default one.
    """

    __slots__ = ("_saved",)

    def __init__(
        self, saved: dict[str, tuple[logging.Logger, list[logging.Handler], int, bool, bool]]
    ) -> None:
        self._saved = saved

    @classmethod
    def capture(cls, *names: str) -> LoggerSnapshot:
        """Capture the named loggers; ``""`` (or no name at all) means the root logger."""
        saved = {}
        for name in names or ("",):
            logger = logging.getLogger(name) if name else logging.getLogger()
            saved[name] = (
                logger,
                list(logger.handlers),
                logger.level,
                logger.propagate,
                logger.disabled,
            )
        return cls(saved)

    def handlers_of(self, logger: logging.Logger) -> list[logging.Handler]:
        """The handlers ``logger`` had at capture; none when it was not captured."""
        for captured, handlers, _level, _propagate, _disabled in self._saved.values():
            if captured is logger:
                return list(handlers)
        return []

    def restore(self) -> None:
        for logger, handlers, level, propagate, disabled in self._saved.values():
            for handler in list(logger.handlers):
                if handler not in handlers:
                    logger.removeHandler(handler)
                    handler.close()
            for handler in handlers:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
            logger.disabled = disabled


class Restorable(Protocol):
    """A snapshot of some process state that can put it back."""

    def restore(self) -> None: ...


def undoable(work: Callable[[], T], *states: Restorable) -> tuple[T, Callable[[], None]]:
    """Run ``work`` and return its result with the undo of everything it changed.

    ``states`` are snapshots taken just before (flags, thread counts, loggers); the
    environment is captured here, whole, so every variable ``work`` sets, changes or
    removes is put back, whoever wrote it. This is the one way lifecycle steps undo
    process state. The undo restores the snapshots newest first, then the environment,
    and runs them all even when one fails (the first failure is raised). When ``work``
    raises, the undo runs at once: a step that fails leaves nothing behind.
    """
    env_before = dict(os.environ)

    def undo() -> None:
        failure: BaseException | None = None
        for state in reversed(states):
            try:
                state.restore()
            except BaseException as exc:
                failure = failure or exc
        EnvSnapshot.changes_since(env_before).restore()
        if failure is not None:
            raise failure

    try:
        result = work()
    except BaseException:
        undo()
        raise
    return result, undo
