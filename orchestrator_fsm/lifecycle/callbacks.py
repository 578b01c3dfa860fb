"""User callbacks for SIGUSR1 and SIGUSR2 while a run is live.

Schedulers send one of these ahead of a preemption (SLURM's ``--signal=USR1@120``),
asking the job to save its state. A callback is attached in code (the orchestrator's
``signal_callbacks=`` or ``on_signal``) or named in the recipe
(``infrastructure.signal_callbacks``); for one signal, the one given in code wins and
the recipe's is not even imported.

Like :class:`~orchestrator_fsm.lifecycle.signals.SignalGuard`, the handlers are
installed from ``__enter__`` to the end of cleanup, in the main thread only, and the
previous ones are put back after; a Python handler the caller had installed is called
first. A callback runs in the main thread, between two bytecodes of whatever the run was
doing, and is called as ``callback(orchestrator, signum)``: mid-step as likely as not,
so it should only set a flag for the loop, which saves at its next step boundary (a
state dict taken inside a handler can be torn). An ``Exception`` it raises
is logged with its traceback and the run goes on: a checkpoint that failed must not turn
a healthy run into a crash. A ``BaseException`` (``RunInterrupted``, ``SystemExit``)
propagates. Once cleanup has begun a delivery is only logged: the run's files and log
are being closed, and there is no training left to save.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, Generic, TypeVar

import attrs

from orchestrator_fsm._specs import callback_signal
from orchestrator_fsm.lifecycle.signals import is_chained, take_held_signals

__all__ = ["CONFIG_FIELD", "Callback", "Resolve", "SignalCallbacks"]

OwnerT = TypeVar("OwnerT")

#: A checkpoint callback: called with the run's owner (the orchestrator) and the
#: signal's number.
Callback = Callable[[OwnerT, int], object]

#: How a callback the recipe names is found: ``resolve(name, spec)`` with the signal's
#: name as the recipe spells it and the ``module:function`` spec; raises the
#: ``ConfigError`` that names the recipe's field when it cannot be found.
Resolve = Callable[[str, str], Callback[OwnerT]]

#: The recipe field that names callbacks by ``module:function``.
CONFIG_FIELD = "infrastructure.signal_callbacks"


@attrs.frozen
class _Attached(Generic[OwnerT]):
    label: str
    """How log lines name the callback: its spec, or ``module:qualname`` for code."""
    callback: Callback[OwnerT]


def _label_of(callback: object) -> str:
    qualname = getattr(callback, "__qualname__", None)
    if qualname is None:
        return repr(callback)
    return f"{getattr(callback, '__module__', '?')}:{qualname}"


class SignalCallbacks(Generic[OwnerT]):
    """The callbacks of one run, and the handlers that call them while it is live.

    ``owner`` is what a callback is called with (the orchestrator); ``configured`` maps
    signal names to the recipe's ``module:function`` specs, found by ``resolve``
    (the orchestrator's: it knows how entry points are imported)."""

    def __init__(
        self,
        owner: OwnerT,
        log: Callable[[], logging.Logger],
        *,
        configured: Mapping[str, str],
        resolve: Resolve[OwnerT],
    ) -> None:
        self._owner = owner
        self._log = log
        self._configured_specs = dict(configured)
        self._resolve = resolve
        self._given: dict[int, _Attached[OwnerT]] = {}
        self._configured: dict[int, _Attached[OwnerT]] = {}
        self._previous: dict[int, Any] = {}
        self._running: set[int] = set()
        self._live = False
        self._holding = False

    def attach(self, key: int | str, callback: Callback[OwnerT]) -> None:
        """Call ``callback`` when the signal ``key`` names arrives (replacing the callback
        attached to it before); installed at once when the run is live. Raises
        ``ValueError`` for a signal other than SIGUSR1/SIGUSR2, ``TypeError`` for a
        callback that is not callable."""
        signum = callback_signal(key)
        if not callable(callback):
            raise TypeError(
                f"the callback for {signum.name} must be callable as "
                f"callback(orchestrator, signum), got {type(callback).__name__}"
            )
        self._given[signum] = _Attached(_label_of(callback), callback)
        if self._live and not self._holding:
            self._install_handler(signum)

    def install(self) -> None:
        """Import the recipe's callbacks (those no code callback replaces), then take
        their signals over. A callback that cannot be imported is a ``ConfigError``
        naming its field, raised before any handler changes."""
        configured: dict[int, _Attached[OwnerT]] = {}
        for name, spec in self._configured_specs.items():
            signum = callback_signal(name)
            if signum not in self._given:
                configured[signum] = _Attached(spec, self._resolve(name, spec))
        self._configured = configured
        self._live = True
        for taken in sorted(self._given.keys() | configured.keys()):
            self._install_handler(taken)

    def deliver_held(self) -> None:
        """Hand the callbacks what arrived while the console command was starting
        (:func:`~orchestrator_fsm.lifecycle.signals.hold_startup_signals`): called once
        the run is live (READY), so a callback finds the run's paths and log. A signal
        no callback takes is logged and dropped."""
        for signum in take_held_signals():
            name = signal.Signals(signum).name
            if signum not in self._previous:
                self._log().info(
                    "received %s while the run was starting; no callback is attached to it",
                    name,
                )
                continue
            self._log().info("received %s while the run was starting; delivering it now", name)
            self._on_signal(signum, None)

    def hold(self) -> None:
        """From now on (cleanup) log a delivery instead of calling its callback."""
        self._holding = True

    def restore(self) -> None:
        """Put the previous handlers back."""
        # What the start-up holder kept while this run was live had no callback here.
        take_held_signals()
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            # None: the previous handler was not installed from Python and cannot be
            # put back; the default is the nearest thing.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._live = self._holding = False

    def _install_handler(self, signum: int) -> None:
        if signum in self._previous:
            return
        if threading.current_thread() is not threading.main_thread():
            self._log().warning(
                "%s callback not installed: signal handlers can only be installed from "
                "the main thread, and this run is in thread %r",
                signal.Signals(signum).name,
                threading.current_thread().name,
            )
            return
        self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum)
        if previous is not None and is_chained(previous):
            previous(signum, frame)
        attached = self._given.get(signum) or self._configured.get(signum)
        if attached is None:
            return
        name = signal.Signals(signum).name
        log = self._log()
        if self._holding:
            log.info("received %s while cleaning up; not calling %s", name, attached.label)
            return
        if signum in self._running:
            log.info(
                "received %s again while %s still runs; not calling it twice", name, attached.label
            )
            return
        log.info("received %s; calling %s", name, attached.label)
        self._running.add(signum)
        try:
            attached.callback(self._owner, signum)
        except Exception:
            log.exception("%s callback %s failed; the run goes on", name, attached.label)
        finally:
            self._running.discard(signum)
