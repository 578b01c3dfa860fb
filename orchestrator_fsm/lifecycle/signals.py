"""Termination signals as lifecycle events while a run is live.

Between ``__enter__`` and the end of cleanup, SIGINT, SIGTERM and SIGHUP raise
``RunInterrupted`` in the main thread, so a ``with`` block unwinds, the lifecycle
cleans up (or rolls back) and the run is recorded ``interrupted`` with the signal's
name. A handler the caller had installed (not Python's default ones) is called first.
While cleaning up, a signal is held back until the record is final and raised then:
it is never lost, and it never cuts the record short.

A stop the user's code cannot lose: each guard tells ``on_stop`` of every signal that
reaches the live run, so the run remembers the first even when the user's code catches
the exception (``except KeyboardInterrupt``, ``except BaseException``) and returns; the
run is then recorded as ended by that signal (see ``RootOrchestrator``). In cooperative
mode (:meth:`SignalGuard.set_cooperative`) the first signal raises nothing: it only sets
the stop, for a training loop to see at its next step boundary. A second signal raises
``RunInterrupted`` in both modes (the loop did not stop, or swallowed the first), except
while the run already ends (``exiting`` says the signal landed there): then it is held
like one during cleanup.

SIGUSR1 and SIGUSR2 are the signals a user callback can be attached to instead
(:mod:`orchestrator_fsm.lifecycle.callbacks`): schedulers send them ahead of a
preemption, as a request to checkpoint rather than to stop. The console command holds
them from its first line (:func:`hold_startup_signals`) while it imports torch and the
entry, so one that arrives before the run is live is kept for the run's callback instead
of ending the process.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from orchestrator_fsm._specs import CALLBACK_SIGNALS, INTERRUPTING_SIGNALS
from orchestrator_fsm._startup import take_redelivered
from orchestrator_fsm.errors import RunInterrupted

__all__ = [
    "SignalGuard",
    "hold_startup_signals",
    "is_chained",
    "take_held_signals",
]

# The callback signals that arrived while they were held (before a run took them over,
# or while a run attached no callback to them), each once, in the order they came.
_held_early: list[int] = []


def _keep(signum: int, frame: FrameType | None) -> None:
    # A signal handler: only remembers (a scheduler's repeated SIGUSR1 is one request).
    if signum not in _held_early:
        _held_early.append(signum)


def hold_startup_signals() -> None:
    """Keep SIGUSR1 and SIGUSR2 from now on instead of letting them end the process.

    The console command calls this first thing: a scheduler's checkpoint request that
    arrives while the command still imports torch and the entry (seconds) is kept, and a
    run that then becomes live hands it to its callback (:func:`take_held_signals`).
    When no run takes a signal over (another sub-command, a run that attached no callback
    to it, the time after cleanup) it is kept and never delivered: never fatal. A no-op
    outside the main thread, where handlers cannot be installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in CALLBACK_SIGNALS:
        signal.signal(signum, _keep)


def take_held_signals() -> tuple[int, ...]:
    """The callback signals kept by :func:`hold_startup_signals` since the last call, in
    the order they arrived, each once; forgets them."""
    taken = tuple(_held_early)
    del _held_early[: len(taken)]
    return taken


def is_chained(handler: Any) -> bool:
    """Whether ``handler``, found installed when a run took a signal over, is called
    too when the signal arrives: any Python callable the caller installed."""
    # Python's own defaults and "ignore"/"default" are replaced, not chained; so is an
    # enclosing guard (the CLI's), which would raise before this one could hold.
    if not callable(handler) or handler is signal.default_int_handler or handler is _keep:
        # The start-up holder is replaced too: what it kept is handed over instead.
        return False
    return not isinstance(getattr(handler, "__self__", None), SignalGuard)


class SignalGuard:
    """Installs handlers that raise ``RunInterrupted`` for ``signals`` (main thread only)
    and puts the old ones back.

    ``defer(frame, interrupt)`` may take an interrupt to raise later, at a safe point
    of its own (True); the lifecycle machine does so while it does its bookkeeping.
    ``on_stop(interrupt)`` is told of each signal that reaches the guard before it holds
    (so what the user's code swallows is still known). ``exiting(frame)``: whether a
    signal landed in the code that ends the run; with it, a signal after the first is
    raised again unless it landed there (then held); without it, every signal after the
    first raised one is held (the console command's guard).
    """

    def __init__(
        self,
        on_held: Callable[[RunInterrupted], None] | None = None,
        signals: tuple[int, ...] = INTERRUPTING_SIGNALS,
        defer: Callable[[FrameType | None, RunInterrupted], bool] | None = None,
        *,
        on_stop: Callable[[RunInterrupted], None] | None = None,
        exiting: Callable[[FrameType | None], bool] | None = None,
    ) -> None:
        self._on_held = on_held
        self._defer = defer
        self._on_stop = on_stop
        self._exiting = exiting
        self._cooperative = False
        self._stopped = False
        self._signals = signals
        self._previous: dict[int, Any] = {}
        self._holding = False
        self._ending = False
        self._held: RunInterrupted | None = None

    def install(self) -> None:
        """Take over the interrupting signals; a no-op outside the main thread."""
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for signum in self._signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def hold(self) -> None:
        """From now on keep a signal for :meth:`restore` instead of raising it (telling
        ``on_held`` at once, so the run's outcome can say it was interrupted)."""
        self._holding = self._ending = True

    def set_cooperative(self, cooperative: bool) -> bool:
        """From now on let the first signal only tell ``on_stop`` (True) or raise it
        (False, the default); the previous setting."""
        previous, self._cooperative = self._cooperative, cooperative
        return previous

    def restore(self, then: Callable[[int, FrameType | None], Any] | None = None) -> None:
        """Put the previous handlers back (or ``then`` instead, with no moment between
        in which a signal would meet the default action), then raise a signal held
        since :meth:`hold`."""
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler if then is None else then)
        held, self._held, self._holding, self._ending = self._held, None, False, False
        if held is not None:
            raise held

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if take_redelivered(signum) and not self._ending:
            # The interrupt raised for this signal was swallowed (see _startup): the
            # same interrupt, not a further one, so raised again as the first was.
            self._raise(frame, RunInterrupted(signum))
            return
        previous = self._previous.get(signum)
        if previous is not None and is_chained(previous):
            previous(signum, frame)
        if self._holding:
            # One instance: it keeps the time the signal came, not the time raised.
            self._keep(RunInterrupted(signum))
            return
        interrupt = RunInterrupted(signum)
        first, self._stopped = not self._stopped, True
        if self._on_stop is not None:
            self._on_stop(interrupt)
        if first and self._cooperative:
            return  # the loop sees it at its next step boundary (stop_requested)
        self._raise(frame, interrupt)

    def _raise(self, frame: FrameType | None, interrupt: RunInterrupted) -> None:
        """Raise ``interrupt`` now, unless the run defers it or it landed in the run's
        exit (then held)."""
        if self._defer is not None and self._defer(frame, interrupt):
            return  # the run raises it at its next safe point
        if self._exiting is not None and self._exiting(frame):
            # Landed in the run's own exit, before cleanup could hold it: raising it
            # would cut the cleanup out. Held like one during cleanup; the stop is known.
            self._holding = True
            self._keep(interrupt)
            return
        if self._exiting is None:
            # The console command's guard: the command ends from now on, and a further
            # signal (schedulers often send two) is held like one during cleanup.
            self._holding = True
        raise interrupt

    def _keep(self, interrupt: RunInterrupted) -> None:
        if self._held is None:
            self._held = interrupt
            if self._on_held is not None:
                self._on_held(interrupt)
