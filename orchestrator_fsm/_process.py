"""Capture and restore the bits of process-wide state that lifecycle steps change."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

__all__ = ["EnvSnapshot", "LoggerSnapshot"]


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

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._saved)

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

    def added_handlers(self) -> list[logging.Handler]:
        """Handlers attached to the captured loggers since the capture."""
        added: list[logging.Handler] = []
        for logger, handlers, _level, _propagate, _disabled in self._saved.values():
            added.extend(h for h in logger.handlers if h not in handlers)
        return added

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
