"""Progress bars for the user's own loops, on the run's console so log lines never garble them.

``progress(...)`` (and ``orch.progress(...)``, which shows bars on rank 0 only) is a
context manager and an iterable wrapper::

    with orch.progress(total=epochs, description="training") as bar:
        for epoch in range(epochs):
            for batch in orch.progress(loader, description=f"epoch {epoch}"):
                ...
            bar.advance(loss=loss)

While a run is live the bar is drawn on the console its log handler writes to (one rich
``Console`` on stderr), so a log record is printed above the bar instead of over it.
While a bar is live on a terminal, ``sys.stdout`` and ``sys.stderr`` (those that are
the terminal) print each whole line above the bar too, instead of after it (which
would leave copies of the bar behind), and still copy it into ``logs/stdout.log``
when the run captures stdout; everything is put back when the last bar ends.
Outside a run it uses a console of its own on stderr. Bars opened while another is
live share its display (one line each). When that console is not a terminal (a file,
a pipe, CI), nothing is redrawn: the bar writes one plain line when it ends, and one
every ``plain_every_s`` seconds while it runs (0: only the final one).

Rich's progress machinery is imported when the first bar is drawn on a terminal, so
``import orchestrator_fsm`` does not pay for it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Final, Generic, TypeVar

from rich.console import Console
from rich.logging import RichHandler

from orchestrator_fsm.phases.logging import run_console_handler, split_tee
from orchestrator_fsm.run_log import LOGGER_NAME

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["PLAIN_EVERY_S", "ProgressBar", "progress", "run_console"]

#: How often, by default, a bar on a console that is not a terminal writes a line.
PLAIN_EVERY_S: Final = 30.0

_T = TypeVar("_T")

# The live display of each terminal console and how many bars use it: bars opened while
# one is live become tasks of the same display (rich allows one live display per
# console). An entry lives exactly as long as its bars; nothing stays once they end.
_live: weakref.WeakKeyDictionary[Console, list[Any]] = weakref.WeakKeyDictionary()


def run_console() -> Console | IO[str] | None:
    """Where the live run's console log handler writes: its rich ``Console`` on a
    terminal, its plain stream otherwise; None when no run is live in this process."""
    handler = run_console_handler(logging.getLogger(LOGGER_NAME))
    if isinstance(handler, RichHandler):
        return handler.console
    if isinstance(handler, logging.StreamHandler):
        stream: IO[str] = handler.stream
        return stream
    return None


def _new_display(console: Console) -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[values]}", markup=False),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        # print() reaches the display through _AboveTheBar (rich's own redirection
        # would bypass stdout.log); log records through the console itself.
        redirect_stdout=False,
        redirect_stderr=False,
    )


class _AboveTheBar:
    """Stands in for ``sys.stdout`` or ``sys.stderr`` while a bar is live on a terminal:
    each whole line written is printed on the bar's console (rich clears the bar,
    prints the line and draws the bar again below it) and copied to ``stdout.log``
    when the stream was teed; a partial line waits for its newline or a flush."""

    def __init__(self, console: Console, replaced: IO[str]) -> None:
        self._console = console
        self._replaced = replaced
        self._screen, self._copy = split_tee(replaced)
        self._pending: list[str] = []
        self._lock = threading.RLock()

    @property
    def replaced(self) -> IO[str]:
        """The stream this one stands in for."""
        return self._replaced

    @property
    def rich_proxied_file(self) -> IO[str]:
        """The stream a rich console created on ``sys.stdout`` writes to meanwhile."""
        return self._screen

    def write(self, text: str) -> int:
        if self._copy is not None:
            self._copy(text)
        with self._lock:
            *whole, rest = text.split("\n")
            if whole:
                whole[0] = "".join(self._pending) + whole[0]
                self._pending = [rest] if rest else []
                self._print(whole)
            elif rest:
                self._pending.append(rest)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                pending, self._pending = "".join(self._pending), []
                self._print([pending])

    def _print(self, lines: list[str]) -> None:
        from rich.text import Text

        # soft_wrap: the terminal wraps a long line as it would have without the bar.
        text = Text("\n").join(Text.from_ansi(line) for line in lines)
        self._console.print(text, soft_wrap=True, highlight=False, markup=False, emoji=False)

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._replaced, name)


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    """Every handler of every logger that writes to a stream, files excluded."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    found: list[logging.StreamHandler[Any]] = []
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):  # a PlaceHolder has none
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                found.append(handler)
    return found


def _print_above_the_bar(console: Console) -> Callable[[], None]:
    """Put :class:`_AboveTheBar` in place of ``sys.stdout`` and ``sys.stderr`` where
    they write to a terminal, and of those streams in the user's own log handlers
    (``logging.basicConfig``'s); the function returned flushes them and puts back the
    streams (unless someone replaced them meanwhile)."""
    saved: dict[str, tuple[IO[str], _AboveTheBar]] = {}
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        screen, _ = split_tee(stream)
        try:
            terminal = screen.isatty()
        except (AttributeError, ValueError):  # a closed or odd stream: left alone
            terminal = False
        if terminal and not isinstance(stream, _AboveTheBar):
            proxy = _AboveTheBar(console, stream)
            setattr(sys, name, proxy)
            saved[name] = (stream, proxy)
    # A handler keeps the stream it was given (the tee or what it replaced), so its
    # lines go where they went, above the bar.
    replaced = {id(stream) for stream, _ in saved.values()}
    replaced |= {id(split_tee(stream)[0]) for stream, _ in saved.values()}
    handlers: list[tuple[logging.StreamHandler[Any], _AboveTheBar]] = []
    for handler in _stream_handlers():
        if id(handler.stream) in replaced:
            proxy = _AboveTheBar(console, handler.stream)
            handler.setStream(proxy)
            handlers.append((handler, proxy))

    def put_back() -> None:
        for handler, proxy in handlers:
            proxy.flush()
            if handler.stream is proxy:
                handler.setStream(proxy.replaced)
        for name, (stream, proxy) in saved.items():
            proxy.flush()
            if getattr(sys, name) is proxy:
                setattr(sys, name, stream)

    return put_back


def _format_values(values: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in values.items())


class ProgressBar(Generic[_T]):
    """One bar; see :func:`progress`. Use it as a context manager, iterate over it, or
    both; :meth:`advance` moves it by hand."""

    def __init__(
        self,
        iterable: Iterable[_T] | None,
        *,
        total: float | None,
        description: str,
        console: Console | IO[str] | None,
        disable: bool,
        plain_every_s: float,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        if total is not None and (isinstance(total, bool) or total < 0):
            raise ValueError(f"total must be a number >= 0 or None, got {total!r}")
        if plain_every_s < 0:
            raise ValueError(f"plain_every_s must be >= 0, got {plain_every_s!r}")
        self._iterable = iterable
        self.total = total
        self.description = description
        self.completed = 0.0
        self.values: dict[str, float] = {}
        self._target = console if console is not None else run_console()
        self._disable = disable
        self._plain_every_s = plain_every_s
        self._started_at = 0.0
        self._last_line_at = 0.0
        self._open = False
        self._display: Progress | None = None
        self._console: Console | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressBar[_T]:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[_T]:
        if self._iterable is None:
            raise TypeError("this bar wraps no iterable; call advance() instead")
        opened_here = not self._open
        if opened_here:
            self.start()
        try:
            for item in self._iterable:
                yield item
                self.advance()
        finally:
            if opened_here:
                self.close()

    @property
    def is_terminal(self) -> bool:
        """Whether the bar is drawn live (False when plain lines, or nothing, are written)."""
        return self._display is not None

    def start(self) -> None:
        """Show the bar (a no-op when already shown)."""
        if self._open:
            return
        self._open = True
        self._started_at = self._last_line_at = time.monotonic()
        if self._disable:
            return
        target = self._target
        if target is None:
            target = Console(file=sys.stderr)
        if isinstance(target, Console) and target.is_terminal:
            self._attach(target)
        else:
            self._target = target

    def _attach(self, console: Console) -> None:
        shared = _live.get(console)
        if shared is None:
            display = _new_display(console)
            display.start()
            shared = _live[console] = [display, 0, _print_above_the_bar(console)]
        shared[1] += 1
        self._console, self._display = console, shared[0]
        assert self._display is not None
        self._task = self._display.add_task(
            self.description, total=self.total, completed=int(self.completed), values=""
        )

    def advance(self, steps: float = 1, **values: float) -> None:
        """Move the bar by ``steps``; ``values`` (``loss=0.1``) are shown beside it."""
        self.completed += steps
        self._changed(values)

    def update(
        self,
        *,
        description: str | None = None,
        completed: float | None = None,
        total: float | None = None,
        **values: float,
    ) -> None:
        """Change the description, the count done, the total or the values shown."""
        if description is not None:
            self.description = description
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        self._changed(values)

    def _changed(self, values: dict[str, float]) -> None:
        self.values.update(values)
        if self._display is not None and self._task is not None:
            self._display.update(
                self._task,
                description=self.description,
                completed=self.completed,
                total=self.total,
                values=_format_values(self.values),
            )
        elif self._open and not self._disable and self._plain_every_s > 0:
            now = time.monotonic()
            if now - self._last_line_at >= self._plain_every_s:
                self._last_line_at = now
                self._write_plain_line()

    def _write_plain_line(self) -> None:
        target = self._target
        if target is None:
            return
        done = f"{self.completed:g}" if self.total is None else f"{self.completed:g}/{self.total:g}"
        parts = [self.description, done, _format_values(self.values)]
        parts.append(f"{time.monotonic() - self._started_at:.1f}s")
        line = " ".join(part for part in parts if part)
        if isinstance(target, Console):
            target.file.write(line + "\n")
            target.file.flush()
        else:
            target.write(line + "\n")
            target.flush()

    def close(self) -> None:
        """Stop the bar. On a terminal the outermost bar's last state stays on screen
        and a bar that ends while another is live is removed; otherwise its last state
        is written as one plain line. A no-op when not shown."""
        if not self._open:
            return
        self._open = False
        if self._disable:
            return
        display, console = self._display, self._console
        if display is None or console is None:
            self._write_plain_line()
            return
        self._display = None
        shared = _live.get(console)
        if shared is None:
            return
        shared[1] -= 1
        if shared[1] == 0:
            del _live[console]
            try:
                shared[2]()  # lines printed meanwhile stay above the last frame
            finally:
                display.stop()  # the last frame stays on screen
        elif self._task is not None:
            display.remove_task(self._task)  # an inner bar (one epoch's) makes room


def progress(
    iterable: Iterable[_T] | None = None,
    *,
    total: float | None = None,
    description: str = "",
    console: Console | IO[str] | None = None,
    disable: bool = False,
    plain_every_s: float = PLAIN_EVERY_S,
) -> ProgressBar[_T]:
    """A progress bar over ``iterable`` (its ``len`` is the total unless ``total`` is
    given) or, without one, one moved by ``advance``.

    It draws on ``console`` (a rich ``Console`` or a text stream), by default on the
    live run's console (:func:`run_console`), else on stderr. On a terminal it is a
    rich bar, with log records printed above it; otherwise it writes a plain line
    ("epoch 1 48/48 loss=0.12 3.1s") when it ends and every ``plain_every_s`` seconds
    before (0: only at the end). ``disable=True`` shows nothing (other ranks)."""
    return ProgressBar(
        iterable,
        total=total,
        description=description,
        console=console,
        disable=disable,
        plain_every_s=plain_every_s,
    )
