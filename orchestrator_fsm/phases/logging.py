"""Phase 4, logging: the run's logger, writing to the console and to one file per rank.

``Logger.setup`` attaches two handlers to one named logger (never to the root logger):
a rich console handler on stderr and a UTF-8 file handler at ``<log_dir>/run.log`` on
rank 0 and ``<log_dir>/rank<N>.log`` on rank N. Every line, in the file and on the
console, carries ``[rankN]`` (the prefix torch's own distributed messages use, so
one ``grep -F '[rank1]'`` finds both). Rank 0's console shows the configured level; the other
ranks' consoles show warnings and errors only, so a torchrun job's console holds rank
0's lines and every rank's problems, each once. Propagation is turned off so that
handlers on the root logger do not print every line a second time. The module keeps
no state of its own: the undo is a :class:`orchestrator_fsm._process.LoggerSnapshot`
of the logger taken before ``setup``, whose ``restore()`` closes and detaches the
handlers added since and puts back the level and propagation (the orchestrator does
exactly that at cleanup).
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from rich.console import Console
from rich.logging import RichHandler

from orchestrator_fsm._process import LoggerSnapshot, undoable
from orchestrator_fsm.errors import LifecycleError
from orchestrator_fsm.phases.context import LOGGER_NAME

if TYPE_CHECKING:
    from collections.abc import Callable

    from orchestrator_fsm.lifecycle.machine import Undo
    from orchestrator_fsm.phases.context import RunContext

__all__ = ["FILE_ONLY", "LOGGER_NAME", "LOG_FILE_NAME", "Logger", "log_file_name", "step"]

#: ``extra=`` for a record meant for the log file alone, e.g. the traceback of the error
#: that ended a run, which the console (or the CLI) already says in one line.
FILE_ONLY: Final = {"orchestrator_fsm_file_only": True}

#: Rank 0's log file; rank N writes ``rank<N>.log`` beside it (:func:`log_file_name`).
LOG_FILE_NAME: Final = "run.log"
# "{rank}" is filled in by setup; the rest is logging's own %-style.
FILE_FORMAT: Final = "%(asctime)s [rank{rank}] %(levelname)-8s %(name)s: %(message)s"
CONSOLE_PLAIN_FORMAT: Final = "[rank{rank}] %(levelname)-8s %(message)s"
# Rich draws the level in a column of its own.
CONSOLE_RICH_FORMAT: Final = "[rank{rank}] %(message)s"

#: The least a rank other than 0 prints on the console; its own file has every line.
OTHER_RANKS_CONSOLE_LEVEL: Final = logging.WARNING

# Set on every handler this module creates, so a second setup removes those and
# nothing a user attached to the same logger.
_HANDLER_MARK: Final = "_orchestrator_fsm_run_handler"


class _UtcIsoFormatter(logging.Formatter):
    """Formats ``asctime`` as ISO-8601 UTC with milliseconds, like the run's other files."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
        return moment.isoformat(timespec="milliseconds")


def log_file_name(rank: int) -> str:
    """The file rank ``rank`` logs to in the run's ``logs/``: ``run.log`` on rank 0,
    ``rank<N>.log`` elsewhere, so ranks sharing one run directory never share a file."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
    return LOG_FILE_NAME if rank == 0 else f"rank{rank}.log"


def _with_rank(fmt: str, rank: int) -> str:
    return fmt.replace("{rank}", str(rank))


def _parse_level(level: str | int) -> int:
    if isinstance(level, bool):
        raise ValueError(f"log level must be a level name or an integer, got {level!r}")
    if isinstance(level, int):
        if level < 0:
            raise ValueError(f"log level must be a non-negative integer, got {level}")
        return level
    if isinstance(level, str):
        name = level.strip().upper()
        if name.isdigit():
            return int(name)
        value = logging.getLevelName(name)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL "
        f"(any case) or an integer, got {level!r}"
    )


def _check_log_dir(log_dir: Path) -> None:
    if not log_dir.exists():
        raise FileNotFoundError(
            errno.ENOENT,
            "the log directory does not exist (it is created with the run directory "
            "by RunPaths.create)",
            str(log_dir),
        )
    if not log_dir.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, "the log directory is not a directory", str(log_dir)
        )


def _mark(handler: logging.Handler) -> logging.Handler:
    setattr(handler, _HANDLER_MARK, True)
    return handler


def _is_ours(handler: logging.Handler) -> bool:
    return getattr(handler, _HANDLER_MARK, False) is True


def _detach_ours(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if _is_ours(handler):
            logger.removeHandler(handler)
            handler.close()


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "orchestrator_fsm_file_only", False)


def _console_handler(rank: int) -> logging.Handler:
    """Rich output on a terminal; plain unwrapped lines when stderr is a file or pipe
    (CI logs, ``2> file``), where rich would hard-wrap every line at 80 columns.

    On ranks other than 0 it lets through warnings and errors only."""
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(
            console=Console(stderr=True),
            markup=False,
            rich_tracebacks=False,
            show_path=False,
        )
        handler.setFormatter(logging.Formatter(_with_rank(CONSOLE_RICH_FORMAT, rank)))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_with_rank(CONSOLE_PLAIN_FORMAT, rank)))
    if rank != 0:
        handler.setLevel(OTHER_RANKS_CONSOLE_LEVEL)
    return handler


class _RunLogFileHandler(logging.FileHandler):
    """A file handler that reports a failed write (a full disk) once, as one line on
    stderr, instead of a traceback per log record."""

    _reported = False

    def handleError(self, record: logging.LogRecord) -> None:
        if self._reported or not logging.raiseExceptions:
            return
        self._reported = True
        error = sys.exc_info()[1]
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(
                f"orchestrator-fsm: could not write to the log file {self.baseFilename} "
                f"({error}); later lines may be missing from it\n"
            )
            sys.stderr.flush()


class Logger:
    """Sets up the logger of one run (undo: a ``LoggerSnapshot`` taken before)."""

    @staticmethod
    def setup(name: str, log_dir: Path | str, level: str | int, *, rank: int = 0) -> logging.Logger:
        """Configure the logger ``name`` for rank ``rank`` of a run and return it.

        Adds a console handler on stderr (rich on a terminal, plain lines otherwise;
        no markup interpretation) and a file handler appending to
        ``<log_dir>/run.log`` on rank 0, ``<log_dir>/rank<N>.log`` on rank N (UTF-8;
        each line has a UTC timestamp, ``[rankN]``, the level and the logger name).
        Console lines carry ``[rankN]`` too; on ranks other than 0 the console shows
        only WARNING and above. ``level`` is a level name in any case or an integer.
        Sets ``propagate = False``. Calling it again for the same logger replaces the
        handlers the previous call added instead of stacking them.

        Raises ``ValueError`` for an unknown level or a negative rank and
        ``FileNotFoundError`` (or ``NotADirectoryError``) naming ``log_dir`` when it is
        not an existing directory; the logger is left unchanged then. To undo it,
        capture ``LoggerSnapshot.capture(name)`` before the first call and
        ``restore()`` it.
        """
        if not name:
            raise ValueError("the run logger needs a name; the root logger is never configured")
        numeric_level = _parse_level(level)
        file_name = log_file_name(rank)
        log_dir = Path(log_dir)
        _check_log_dir(log_dir)

        file_handler = _RunLogFileHandler(log_dir / file_name, mode="a", encoding="utf-8")
        file_handler.setFormatter(_UtcIsoFormatter(_with_rank(FILE_FORMAT, rank)))
        console_handler = _console_handler(rank)
        console_handler.addFilter(_not_file_only)

        logger = logging.getLogger(name)
        _detach_ours(logger)
        logger.addHandler(_mark(console_handler))
        logger.addHandler(_mark(file_handler))
        logger.setLevel(numeric_level)
        logger.propagate = False
        return logger


def _takes_rank(initializer: Callable[..., Any]) -> bool:
    """Whether ``initializer`` accepts ``rank=`` (a parameter of that name, or ``**``)."""
    try:
        parameters = inspect.signature(initializer).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return False
    return any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD
        or (parameter.name == "rank" and parameter.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for parameter in parameters
    )


def step(run: RunContext) -> Undo:
    """Phase 4: ``log_initializer(name=..., log_dir=paths.logs, level=..., rank=...)``.

    Runs on every rank; ``paths.logs`` is the run's one ``logs/`` folder, and each rank
    writes its own file there (:func:`log_file_name`). ``rank=run.rank`` is passed to
    initializers that accept it (``Logger.setup`` does); one with the reference
    signature ``(name, log_dir, level)`` is called with those three only, and decides
    itself where a rank's lines go. The returned logger becomes ``run.logger``. The
    undo closes and removes every handler of that logger (whatever its name), puts back
    the package and root loggers as they were, and clears ``run.logger``. An
    initializer that returns None stops the run here with a ``LifecycleError``.
    """
    paths = run.require_paths()
    before = LoggerSnapshot.capture(LOGGER_NAME, "")

    initializer = run.deps.log_initializer
    options: dict[str, Any] = {"rank": run.rank} if _takes_rank(initializer) else {}

    def start_logging() -> logging.Logger:
        made = initializer(
            name=LOGGER_NAME, log_dir=paths.logs, level=run.cfg.telemetry.log_level, **options
        )
        if made is None:
            raise LifecycleError(
                "the log_initializer returned None; it must return the logging.Logger "
                "the run writes to (Logger.setup does)"
            )
        return cast(logging.Logger, made)

    made, restore = undoable(start_logging, before)
    run.logger = made

    def stop_logging() -> None:
        kept = before.handlers_of(made)  # put back by the snapshot, not closed
        try:
            for handler in list(made.handlers):
                if handler not in kept:
                    made.removeHandler(handler)
                    handler.close()
        finally:
            run.logger = None
            restore()

    return stop_logging
