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
doing, and is called as ``callback(orchestrator, signum)``. An ``Exception`` it raises
is logged with its traceback and the run goes on: a checkpoint that failed must not turn
a healthy run into a crash. A ``BaseException`` (``RunInterrupted``, ``SystemExit``)
propagates. Once cleanup has begun a delivery is only logged: the run's files and log
are being closed, and there is no training left to save.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from orchestrator_fsm.config.problems import config_error
from orchestrator_fsm.config.sections import DICT_SOURCE_LABEL
from orchestrator_fsm.entry import entry_search_path, resolve_callable
from orchestrator_fsm.errors import EntryPointError
from orchestrator_fsm.lifecycle.signals import callback_signal, is_chained

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config

__all__ = ["CONFIG_FIELD", "SignalCallbacks"]

#: What callbacks are called with (the orchestrator; its type is the caller's business).
_Run = TypeVar("_Run")
# A checkpoint callback: called with the orchestrator and the signal's number.
_Callback = Callable[[Any, int], object]

#: The recipe field that names callbacks by ``module:function``.
CONFIG_FIELD = "infrastructure.signal_callbacks"


@attrs.frozen
class _Attached:
    label: str
    """How log lines name the callback: its spec, or ``module:qualname`` for code."""
    callback: _Callback


def _label_of(callback: object) -> str:
    qualname = getattr(callback, "__qualname__", None)
    if qualname is None:
        return repr(callback)
    return f"{getattr(callback, '__module__', '?')}:{qualname}"


def _resolve_configured(cfg: Config, name: str, spec: str) -> _Callback:
    try:
        # Looked up where --entry is: the working directory, or the file's own one.
        with entry_search_path(spec):
            found = resolve_callable(
                spec, named_by="signal callback", takes="the orchestrator and the signal number"
            )
    except EntryPointError as exc:
        label = str(cfg.source) if cfg.source is not None else DICT_SOURCE_LABEL
        source = None if cfg.source is None else label
        raise config_error(label, [(f"{CONFIG_FIELD}.{name}", str(exc))], source) from exc
    callback: _Callback = found
    return callback


class SignalCallbacks(Generic[_Run]):
    """The callbacks of one run (configured in ``cfg``, attached by code), and the
    handlers that call them with ``orchestrator`` while it is live."""

    def __init__(self, orchestrator: _Run, cfg: Config, log: Callable[[], logging.Logger]) -> None:
        self._orchestrator = orchestrator
        self._cfg = cfg
        self._log = log
        self._given: dict[int, _Attached] = {}
        self._configured: dict[int, _Attached] = {}
        self._previous: dict[int, Any] = {}
        self._running: set[int] = set()
        self._live = False
        self._holding = False

    def attach(self, key: int | str, callback: Callable[[_Run, int], object]) -> None:
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
        cfg = self._cfg
        configured: dict[int, _Attached] = {}
        for name, spec in cfg.infrastructure.signal_callbacks.items():
            signum = callback_signal(name)
            if signum not in self._given:
                configured[signum] = _Attached(spec, _resolve_configured(cfg, name, spec))
        self._configured = configured
        self._live = True
        for taken in sorted(self._given.keys() | configured.keys()):
            self._install_handler(taken)

    def hold(self) -> None:
        """From now on (cleanup) log a delivery instead of calling its callback."""
        self._holding = True

    def restore(self) -> None:
        """Put the previous handlers back."""
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
            attached.callback(self._orchestrator, signum)
        except Exception:
            log.exception("%s callback %s failed; the run goes on", name, attached.label)
        finally:
            self._running.discard(signum)
