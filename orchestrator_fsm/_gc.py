"""What our own work asks of Python's cyclic garbage collector.

:func:`collector_paused` stops it around reading a recipe. :class:`objects_before_frozen`
keeps our work from paying the full collections other imports owe:

CPython's cyclic collector examines the oldest generation (every object that has
survived two collections) only now and then, and ``import torch`` ends with about
165,000 such objects it has not examined yet. The next full pass costs 50-70 ms on
a small machine, and whatever allocates next pays it: without this module that is
our import and the first lifecycle step, which double the time a short run lives
beyond ``import torch``.

:class:`objects_before_frozen` moves every object that exists when our work starts
into the collector's permanent generation (``gc.freeze()``) and puts them back in the
oldest generation (``gc.unfreeze()``) when it ends. Both are constant-time list
moves. While frozen, a collection examines only what our work allocated; once our
work is over the collector sees everything again, so garbage that existed before is
still found by the next full pass, and the pass torch left owed is paid by whatever
allocates afterwards, exactly as it would be without us. The user's code between
lifecycle steps (the body of ``with RootOrchestrator(...)``) runs with the collector
as it found it. One side effect: a full pass made while frozen counts only the
unfrozen objects as long-lived, so the collector's next real full pass may come a
little sooner than it otherwise would (once; after it, its own bookkeeping is right).

Nothing is done when the collector is disabled, when someone else has frozen
objects (``gc.get_freeze_count() > 0``: that owner decides, and a nested use of this
class is a no-op), or when ``ORCHESTRATOR_FSM_GC_FREEZE=0`` is set.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Final, Literal

__all__ = ["GC_FREEZE_ENV", "collector_paused", "objects_before_frozen"]

GC_FREEZE_ENV: Final = "ORCHESTRATOR_FSM_GC_FREEZE"


class objects_before_frozen:
    """Context manager: the objects that exist on entry are frozen until exit."""

    __slots__ = ("_froze",)

    def __init__(self) -> None:
        self._froze = False

    def __enter__(self) -> None:
        if gc.isenabled() and not gc.get_freeze_count() and os.environ.get(GC_FREEZE_ENV) != "0":
            gc.freeze()
            self._froze = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Literal[False]:
        if self._froze:
            self._froze = False
            gc.unfreeze()
        return False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the collector (as it was before) around building many long-lived objects.

    Reading YAML creates up to some hundred thousand nodes at once, none of them
    garbage, and the collector walks them all again and again as they pile up: with
    it, composing 100,000 keys took three times as long, and more the more keys.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
