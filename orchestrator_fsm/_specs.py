"""How a recipe names what it asks for: callables, observers and callback signals.

Pure facts, on the ground floor: the recipe's checks (:mod:`orchestrator_fsm.config`)
accept exactly what :mod:`orchestrator_fsm.entry`, :mod:`orchestrator_fsm.observers`
and :mod:`orchestrator_fsm.lifecycle.signals` later resolve, without importing them.
"""

from __future__ import annotations

import signal
from typing import Final

__all__ = [
    "CALLBACK_SIGNALS",
    "INTERRUPTING_SIGNALS",
    "KNOWN_OBSERVERS",
    "callback_signal",
    "is_entry_spec",
    "is_script_spec",
]

#: Observers the recipe may name by a short name instead of ``module:factory``.
KNOWN_OBSERVERS: Final = {
    "mlflow": "orchestrator_fsm.mlflow_observer:MlflowObserver",
    "tensorboard": "orchestrator_fsm.tensorboard_observer:TensorBoardObserver",
}

#: The signals that end a live run.
INTERRUPTING_SIGNALS: Final = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

#: The signals a user callback can be attached to (absent where the platform lacks them).
CALLBACK_SIGNALS: Final[tuple[signal.Signals, ...]] = tuple(
    getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)


def is_entry_spec(spec: object) -> bool:
    """Whether ``spec`` is a string of the shape a callable is named by:
    ``module:function`` or ``path/to/file.py:function``."""
    if not isinstance(spec, str):
        return False
    module_part, sep, attr_path = spec.rpartition(":")
    return bool(sep and module_part and attr_path)


def is_script_spec(spec: object) -> bool:
    """Whether ``spec`` names a script run as ``__main__``: a path ending in ``.py``
    with no ``:function`` after it (``train.py``, ``scripts/train.py``)."""
    if not isinstance(spec, str) or not spec.endswith(".py"):
        return False
    return ":" not in spec.replace("\\", "/").rpartition("/")[2]


def _callback_choices() -> str:
    names = [member.name for member in CALLBACK_SIGNALS]
    short = [name.removeprefix("SIG") for name in names]
    return f"{' or '.join(names)} (or {', '.join(short)})" if names else "none on this platform"


def callback_signal(key: object) -> signal.Signals:
    """The signal a callback is attached to, named by ``key``: a signal number or
    ``signal.Signals`` member, or a name with or without its ``SIG`` prefix, in any case.

    Raises ``ValueError`` naming ``key`` and the allowed signals for anything that is
    not SIGUSR1 or SIGUSR2: the interrupting signals already mean "end the run".
    """
    found: signal.Signals | None = None
    if isinstance(key, str):
        name = key.strip().upper()
        found = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
        if not isinstance(found, signal.Signals):
            found = None
    elif isinstance(key, int) and not isinstance(key, bool):
        try:
            found = signal.Signals(key)
        except ValueError:
            found = None
    if found is not None and found in CALLBACK_SIGNALS:
        return found
    given = found.name if found is not None else repr(key)
    why = " (SIGINT, SIGTERM and SIGHUP end the run)" if found in INTERRUPTING_SIGNALS else ""
    raise ValueError(
        f"a signal callback can be attached to {_callback_choices()} only, not {given}{why}"
    )
