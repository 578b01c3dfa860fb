"""Entries whose import takes 3 s, as a training script that imports its world does:
the window in which a SIGUSR1 meets an ``orchestrator-fsm run`` that is still starting.
``main`` is :func:`entries.quick`, ``sleepy`` :func:`entries.sleepy`.
"""

from __future__ import annotations

import time

time.sleep(3)

from entries import quick as main  # noqa: E402  (after the slow start, on purpose)
from entries import sleepy  # noqa: E402

__all__ = ["main", "sleepy"]
