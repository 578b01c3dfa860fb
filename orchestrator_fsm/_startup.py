"""The console command's first moments: a signal while its modules are still being
imported ends it with one line, never a traceback.

``import orchestrator_fsm`` is the first code of the package that runs in the command's
process (the console script and ``python -m orchestrator_fsm`` both import the package
first). :func:`take_over` is called there; it does nothing unless the process is that
command, so a library import never changes a signal's handling. Until
:func:`hand_back` (``run``: once the entry, the recipe and torch are loaded, just
before the run's own signal handling takes over; other sub-commands: once the command
line is parsed), SIGINT, SIGTERM and SIGHUP print ``orchestrator-fsm: interrupted
(SIGINT)`` (``before the run started`` for ``run``) and end the process with ``128 +
signal``: 130 for Ctrl-C. No run exists yet, so there is nothing to clean up, and an
interrupt raised inside an import cannot be half-handled (swallowed, or fatal inside
torch's C++).

For the rest of the command's life, an interrupt that Python swallows is delivered
again. A signal handler's exception raised while a ``__del__`` method or a weakref
callback runs (importlib runs one at the end of nearly every import) is printed as
"Exception ignored in ..." and lost: Ctrl-C during ``import torch`` then went unseen
and the run went on to complete. The command's ``sys.unraisablehook`` sends such an
interrupt's signal again (:func:`take_redelivered` lets a handler that holds further
signals know that this one is the same, still to be raised), so it is raised in the
code that runs next.

At the other end, :func:`ignore_once_settled` makes the command's last exit handler
ignore SIGINT, SIGTERM and SIGHUP. Python ends its own signal handling as it finalises,
before objects' ``__del__`` methods run (a pool or a writer closing at exit); a signal
then met the default action and the process died of it (exit -15 instead of the 143 or
0 the run earned), though every exit handler had already run and nothing was left to cut
short. Only stdlib modules are imported here.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import os
import signal
import sys
from types import FrameType
from typing import Any, Final

__all__ = [
    "hand_back",
    "ignore_once_settled",
    "interrupted_line",
    "is_console_process",
    "take_over",
    "take_redelivered",
]

_COMMAND: Final = "orchestrator-fsm"
_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The handlers found when take_over replaced them, put back by hand_back.
_previous: dict[int, object] = {}
# Signals sent again because the interrupt their handler raised was swallowed.
_redelivered: set[int] = set()


def is_console_process() -> bool:
    """Whether this process is the ``orchestrator-fsm`` command (the console script or
    ``python -m orchestrator_fsm``)."""
    if os.path.basename(sys.argv[0] if sys.argv else "") == _COMMAND:
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    return any(argv[i] == "-m" and argv[i + 1] == "orchestrator_fsm" for i in range(len(argv) - 1))


def interrupted_line(signum: int, words: list[str]) -> str:
    """The one line saying that ``signum`` stopped the command ``words`` (its argv)."""
    when = " before the run started" if words[:1] == ["run"] else ""
    return f"{_COMMAND}: interrupted ({signal.Signals(signum).name}){when}\n"


def _end_at_once(signum: int, frame: FrameType | None) -> None:
    os.write(2, interrupted_line(signum, sys.argv[1:]).encode())
    os._exit(128 + signum)


def _redeliver_swallowed(unraisable: Any) -> None:
    exc = unraisable.exc_value
    if not isinstance(exc, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
        return
    signum = getattr(exc, "signum", signal.SIGINT)
    _redelivered.add(signum)
    # Sent from another thread: sent from here, its handler would run before this hook
    # returns (Python checks for signals after each call) and be swallowed again. The
    # thread first needs the interpreter lock, so the signal nearly always lands once
    # this thread is back in the code the callback interrupted; should it land in
    # another swallowing spot, this hook sends it again from there.
    _thread.start_new_thread(os.kill, (os.getpid(), signum))


def take_redelivered(signum: int) -> bool:
    """Whether ``signum`` is an interrupt sent again after being swallowed (forgotten
    once asked)."""
    if signum in _redelivered:
        _redelivered.discard(signum)
        return True
    return False


def take_over() -> None:
    """In the command's process only: a signal from now on ends it with one line, and
    a swallowed interrupt is delivered again."""
    if _previous or not is_console_process():
        return
    sys.unraisablehook = _redeliver_swallowed
    for signum in _SIGNALS:
        try:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN:  # nohup, a background job: left ignored
                continue
            signal.signal(signum, _end_at_once)
        except (ValueError, OSError):  # not the main thread
            return
        _previous[signum] = previous


def hand_back() -> None:
    """Put back the handlers :func:`take_over` replaced (Ctrl-C raises
    ``KeyboardInterrupt`` again)."""
    while _previous:
        signum, previous = _previous.popitem()
        signal.signal(signum, previous)  # type: ignore[arg-type]


def ignore_once_settled() -> None:
    """Ignore SIGINT, SIGTERM and SIGHUP once every other exit handler has run (see the
    module); called at the command's start, so that its handler is the last to run."""
    atexit.register(_ignore_from_here)


def _ignore_from_here() -> None:
    for signum in _SIGNALS:
        # Python leaves an ignored signal ignored as it finalises; a handler it resets.
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            signal.signal(signum, signal.SIG_IGN)
