"""Phase 4, logging: the run's logger, writing to the console and to one file per rank.

While the run is live, the step also captures the user's work: the run's handlers go
on the root logger as well, so every logger that propagates (``logging.getLogger(
"mytrain")`` included) reaches the run's file and console; ``warnings.warn`` is routed
into logging (``logging.captureWarnings``); and with ``telemetry.capture_stdout`` (the
default), ``sys.stdout`` and ``sys.stderr`` are teed into ``logs/stdout.log``, each line
marked ``[rankN] `` when the job has several processes (they share the file). All of it
is put back at cleanup.

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
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, TextIO, cast

from orchestrator_fsm._process import LoggerSnapshot, Restorable, undoable
from orchestrator_fsm._system import say_on_stderr
from orchestrator_fsm.errors import LifecycleError
from orchestrator_fsm.layout import LOG_FILE, STDOUT_LOG
from orchestrator_fsm.redaction import redact_url
from orchestrator_fsm.run_log import FILE_ONLY_KEY, LOGGER_NAME

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from orchestrator_fsm.lifecycle.machine import Undo
    from orchestrator_fsm.run_context import RunContext

__all__ = [
    "Logger",
    "log_file_name",
    "run_console_handler",
    "split_tee",
    "step",
]

#: Rank 0's log file; rank N writes ``rank<N>.log`` beside it (:func:`log_file_name`).
# "{rank}" is filled in by setup; the rest is logging's own %-style.
FILE_FORMAT: Final = "%(asctime)s [rank{rank}] %(levelname)-8s %(name)s: %(message)s"
CONSOLE_PLAIN_FORMAT: Final = "[rank{rank}] %(levelname)-8s %(message)s"
# Rich draws the level in a column of its own.
CONSOLE_RICH_FORMAT: Final = "[rank{rank}] %(message)s"

#: What starts each line of ``stdout.log`` in a job of more than one process.
STDOUT_LINE_MARK: Final = "[rank{rank}] "

#: The least a rank other than 0 prints on the console; its own file has every line.
OTHER_RANKS_CONSOLE_LEVEL: Final = logging.WARNING

# The state machine library logs every callback at INFO; with root opened to INFO
# for the user's loggers, those lines would bury the run's own. Quieted while the
# run is live, unless someone set that logger's level themselves.
_QUIETED_LIBRARY_LOGGERS: Final = ("transitions",)

# Set on every handler this module creates, so a second setup removes those and
# nothing a user attached to the same logger.
_HANDLER_MARK: Final = "_orchestrator_fsm_run_handler"


class _UtcIsoFormatter(logging.Formatter):
    """Formats ``asctime`` as ISO-8601 UTC with milliseconds, like the run's other files,
    and replaces the password of every URL in a line (a recipe's ``dataset.name:
    postgres://user:password@host/db`` logged by the pipeline) with ``***``."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
        return moment.isoformat(timespec="milliseconds")


def log_file_name(rank: int) -> str:
    """The file rank ``rank`` logs to in the run's ``logs/``: ``run.log`` on rank 0,
    ``rank<N>.log`` elsewhere, so ranks sharing one run directory never share a file."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
    return LOG_FILE if rank == 0 else f"rank{rank}.log"


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


class _DropFileOnly(logging.Filter):
    """Keeps records logged with ``extra=FILE_ONLY`` off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, FILE_ONLY_KEY, False) is not True


def _console_handler(rank: int, level: int) -> logging.Handler:
    """Rich output on a terminal; plain unwrapped lines when stderr is a file or pipe
    (CI logs, ``2> file``), where rich would hard-wrap every line at 80 columns.

    It shows ``level`` and above (on ranks other than 0, never less than warnings) and
    drops ``FILE_ONLY`` records unless ``level`` is DEBUG or lower."""
    handler: logging.Handler
    if sys.stderr.isatty():
        # rich is imported for a terminal only: a batch job's plain lines need none of it.
        from rich.console import Console

        from orchestrator_fsm.phases._rich_console import RunConsoleHandler

        handler = RunConsoleHandler(
            # The stream of now, not sys.stderr at each write: a stdout tee installed
            # later must not copy log lines (already in the log file) into stdout.log.
            console=Console(file=sys.stderr),
            markup=False,
            rich_tracebacks=False,
            show_path=False,
        )
        handler.setFormatter(logging.Formatter(_with_rank(CONSOLE_RICH_FORMAT, rank)))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_with_rank(CONSOLE_PLAIN_FORMAT, rank)))
    handler.setLevel(max(level, OTHER_RANKS_CONSOLE_LEVEL) if rank != 0 else level)
    if level > logging.DEBUG:
        handler.addFilter(_DropFileOnly())
    return handler


def run_console_handler(logger: logging.Logger) -> logging.Handler | None:
    """The console handler :meth:`Logger.setup` gave ``logger`` (a rich one on a
    terminal, a plain stream handler otherwise); None when it has none."""
    for handler in logger.handlers:
        if _is_ours(handler) and not isinstance(handler, logging.FileHandler):
            return handler
    return None


def _writes_to_console(handler: logging.Handler) -> bool:
    rich_logging = sys.modules.get("rich.logging")  # not imported: no handler is rich's
    if rich_logging is not None and isinstance(handler, rich_logging.RichHandler):
        return True
    if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
        consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        return any(handler.stream is stream for stream in consoles)
    return False


class _RunLogFileHandler(logging.FileHandler):
    """A file handler that reports a failed write (a full disk) once, as one line on
    stderr, instead of a traceback per log record."""

    _reported = False

    def handleError(self, record: logging.LogRecord) -> None:
        if self._reported or not logging.raiseExceptions:
            return
        self._reported = True
        error = sys.exc_info()[1]
        say_on_stderr(
            f"could not write to the log file {self.baseFilename} ({error}); later lines "
            "may be missing from it"
        )


class Logger:
    """Sets up the logger of one run (undo: a ``LoggerSnapshot`` taken before)."""

    @staticmethod
    def setup(
        name: str,
        log_dir: Path | str,
        level: str | int,
        *,
        rank: int = 0,
        console_level: str | int | None = None,
    ) -> logging.Logger:
        """Configure the logger ``name`` for rank ``rank`` of a run and return it.

        Adds a console handler on stderr (rich on a terminal, plain lines otherwise;
        no markup interpretation) and a file handler appending to
        ``<log_dir>/run.log`` on rank 0, ``<log_dir>/rank<N>.log`` on rank N (UTF-8;
        each line has a UTC timestamp, ``[rankN]``, the level and the logger name).
        Console lines carry ``[rankN]`` too; on ranks other than 0 the console shows
        only WARNING and above. ``level`` (the file's) and ``console_level`` (the
        console's; ``None`` means ``level``) are level names in any case or integers;
        the logger's own level is the lower of the two. Records logged with
        ``extra=FILE_ONLY`` stay off the console unless ``console_level`` is DEBUG.
        Sets ``propagate = False``; the root logger is left alone. Calling it again
        for the same logger replaces the handlers the previous call added instead of
        stacking them.

        Raises ``ValueError`` for an unknown level or a negative rank and
        ``FileNotFoundError`` (or ``NotADirectoryError``) naming ``log_dir`` when it is
        not an existing directory; the logger is left unchanged then. To undo it,
        capture ``LoggerSnapshot.capture(name)`` before the first call and
        ``restore()`` it.
        """
        if not name:
            raise ValueError("the run logger needs a name; the root logger is never configured")
        file_level = _parse_level(level)
        shown_level = file_level if console_level is None else _parse_level(console_level)
        file_name = log_file_name(rank)
        log_dir = Path(log_dir)
        _check_log_dir(log_dir)

        file_handler = _RunLogFileHandler(log_dir / file_name, mode="a", encoding="utf-8")
        file_handler.setFormatter(_UtcIsoFormatter(_with_rank(FILE_FORMAT, rank)))
        file_handler.setLevel(file_level)
        console_handler = _console_handler(rank, shown_level)

        logger = logging.getLogger(name)
        _detach_ours(logger)
        logger.addHandler(_mark(console_handler))
        logger.addHandler(_mark(file_handler))
        logger.setLevel(min(file_level, shown_level))
        logger.propagate = False
        return logger


class _WarningsCapture:
    """Whether ``logging.captureWarnings`` is on; ``restore()`` puts that state back."""

    __slots__ = ("_on",)

    def __init__(self, on: bool) -> None:
        self._on = on

    @classmethod
    def capture(cls) -> _WarningsCapture:
        # logging keeps the showwarning it replaced here exactly while it captures.
        return cls(getattr(logging, "_warnings_showwarning", None) is not None)

    def restore(self) -> None:
        logging.captureWarnings(self._on)


class _TeeFile:
    """The file both tees write to: line-buffered, one writer at a time, and a failed
    write (a full disk) reported once on the real stderr instead of raised.

    With a ``line_mark`` (``"[rank1] "``), every line starts with it: the ranks of a job
    append to one ``stdout.log``, and the mark says whose line it is."""

    def __init__(self, path: Path, report_to: TextIO, line_mark: str = "") -> None:
        self._path = path
        self._report_to = report_to
        self._line_mark = line_mark
        self._at_line_start = True
        self._lock = threading.Lock()
        self._file: IO[str] | None = path.open("a", encoding="utf-8", buffering=1)

    def _marked(self, text: str) -> str:
        if not self._line_mark:
            return text
        lines = text.split("\n")
        marked = [self._line_mark + line if line else line for line in lines[1:]]
        first = lines[0]
        if first and self._at_line_start:
            first = self._line_mark + first
        self._at_line_start = text.endswith("\n")
        return "\n".join([first, *marked])

    def write(self, text: str) -> None:
        with self._lock:
            if self._file is None or not text:
                return
            try:
                # A URL's password in what the program prints stays off the disk.
                self._file.write(self._marked(redact_url(text)))
            except (OSError, ValueError) as exc:
                self._give_up(self._file, exc)

    def flush(self) -> None:
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.flush()
            except (OSError, ValueError) as exc:
                self._give_up(self._file, exc)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._file.close()
                self._file = None

    def _give_up(self, file: IO[str], error: Exception) -> None:
        with contextlib.suppress(OSError, ValueError):
            file.close()
        self._file = None
        say_on_stderr(
            f"could not write to {self._path} ({error}); later output is missing from it",
            self._report_to,
        )


class _Tee:
    """Stands in for ``sys.stdout`` or ``sys.stderr``: writes go to the original stream
    (as before) and to the tee file; everything else is the original's."""

    def __init__(self, original: TextIO, copy: _TeeFile) -> None:
        self._original = original
        self._copy = copy

    def write(self, text: str) -> int:
        written = self._original.write(text)
        self._copy.write(text)
        return written

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._original.flush()
        self._copy.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


def split_tee(stream: IO[str]) -> tuple[IO[str], Callable[[str], None] | None]:
    """``stream`` as the screen and the file: for a stream the run teed (``sys.stdout``
    with ``capture_stdout``), the stream it writes through to and the function that
    writes to ``logs/stdout.log`` only; for any other stream, itself and None. The
    progress bar prints a line on the screen its own way and copies it with this."""
    if isinstance(stream, _Tee):
        return stream._original, stream._copy.write
    return stream, None


class _StandardStreamsTee:
    """Tees ``sys.stdout`` and ``sys.stderr`` into one file once started; ``restore()``
    puts back the streams of the moment it was made and closes the file. Each line
    in the file starts with ``line_mark`` (see :class:`_TeeFile`)."""

    def __init__(self, path: Path, line_mark: str = "") -> None:
        self._path = path
        self._line_mark = line_mark
        self._saved = (sys.stdout, sys.stderr)
        self._copy: _TeeFile | None = None

    def start(self) -> None:
        stdout, stderr = self._saved
        self._copy = _TeeFile(self._path, report_to=stderr, line_mark=self._line_mark)
        sys.stdout = cast(TextIO, _Tee(stdout, self._copy))
        sys.stderr = cast(TextIO, _Tee(stderr, self._copy))

    def restore(self) -> None:
        sys.stdout, sys.stderr = self._saved
        if self._copy is not None:
            self._copy.close()
            self._copy = None


def _capture_root(made: logging.Logger, before: LoggerSnapshot) -> None:
    """Put the handlers the initializer gave ``made`` on the root logger too, and let
    root pass ``made``'s level, so every propagating logger reaches the run's file and
    console. ``made`` keeps ``propagate = False``, so its own lines are written once.
    The ``transitions`` library's per-callback INFO lines are held at WARNING.

    A console handler is left off root when root already has one of the user's own
    (``logging.basicConfig``): those lines are printed by that one, never twice. A
    logger that still propagates reaches root anyway and is left alone."""
    root = logging.getLogger()
    if made is root or made.propagate:
        return
    user_console = any(_writes_to_console(handler) for handler in root.handlers)
    kept = before.handlers_of(made)
    for handler in made.handlers:
        if handler in kept or handler in root.handlers:
            continue
        if user_console and _writes_to_console(handler):
            continue
        root.addHandler(handler)
    level = made.getEffectiveLevel()
    if root.level > level:
        root.setLevel(level)
    for name in _QUIETED_LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        if library.level == logging.NOTSET:
            library.setLevel(logging.WARNING)


def _accepted(initializer: Callable[..., Any], *keywords: str) -> set[str]:
    """Which of ``keywords`` ``initializer`` accepts as ``keyword=`` (a parameter of that
    name, or ``**``); its signature is read once."""
    try:
        parameters = inspect.signature(initializer).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return set()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return set(keywords)
    return {
        parameter.name
        for parameter in parameters
        if parameter.name in keywords and parameter.kind is not inspect.Parameter.POSITIONAL_ONLY
    }


def step(run: RunContext) -> Undo:
    """Phase 4: ``log_initializer(name=..., log_dir=paths.logs, level=..., rank=...,
    console_level=...)``, then the capture of the user's logging, warnings and output.

    Runs on every rank; ``paths.logs`` is the run's one ``logs/`` folder, and each rank
    writes its own file there (:func:`log_file_name`). ``rank=run.rank`` is passed to
    initializers that accept it (``Logger.setup`` does); one with the reference
    signature ``(name, log_dir, level)`` is called with those three only, and decides
    itself where a rank's lines go; ``console_level=telemetry.effective_console_level``
    likewise. The returned logger becomes ``run.logger``; the handlers the initializer
    gave it are put on the root logger as well (see :func:`_capture_root`), warnings are
    captured into logging, and with ``telemetry.capture_stdout`` stdout and stderr are
    teed into ``logs/stdout.log``. The undo closes and removes every handler of that
    logger (whatever its name), puts back the package and root loggers, the warnings
    capture and ``sys.stdout``/``sys.stderr`` as they were, and clears ``run.logger``.
    An initializer that returns None stops the run here with a ``LifecycleError``.
    """
    paths = run.require_paths()
    telemetry = run.cfg.telemetry
    before = LoggerSnapshot.capture(LOGGER_NAME, "", *_QUIETED_LIBRARY_LOGGERS)
    states: list[Restorable] = [before, _WarningsCapture.capture()]
    tee = None
    if telemetry.capture_stdout:
        # The ranks of a job share stdout.log: each line says whose it is, as in run.log.
        mark = STDOUT_LINE_MARK.format(rank=run.rank) if run.world_size > 1 else ""
        tee = _StandardStreamsTee(paths.logs / STDOUT_LOG, line_mark=mark)
    if tee is not None:
        states.append(tee)

    initializer = run.deps.log_initializer
    options: dict[str, Any] = {}
    accepted = _accepted(initializer, "rank", "console_level")
    if "rank" in accepted:
        options["rank"] = run.rank
    if "console_level" in accepted:
        options["console_level"] = telemetry.effective_console_level

    def start_logging() -> logging.Logger:
        made = initializer(
            name=LOGGER_NAME, log_dir=paths.logs, level=telemetry.log_level, **options
        )
        if made is None:
            raise LifecycleError(
                "the log_initializer returned None; it must return the logging.Logger "
                "the run writes to (Logger.setup does)"
            )
        logger = cast(logging.Logger, made)
        _capture_root(logger, before)
        logging.captureWarnings(True)
        if tee is not None:
            tee.start()
        return logger

    made, restore = undoable(start_logging, *states)
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
