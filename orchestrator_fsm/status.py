"""The run status vocabulary: the one owner of the words ``run.json``, ``runs``,
``inspect``, sweeps and observers use for how a run stands or ended.

``run.json`` holds one of :data:`RECORDED_STATUSES`; readers add ``crashed`` for a
``running`` record whose process is gone (see ``lifecycle.record.infer_status``).
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "COMPLETED",
    "CRASHED",
    "FAILED",
    "INTERRUPTED",
    "RECORDED_STATUSES",
    "REFUSED",
    "RUNNING",
    "STATUSES",
    "WORST_FIRST",
    "RunStatus",
]

RunStatus = Literal["running", "completed", "failed", "interrupted", "refused", "crashed"]

#: Live: its process (as far as the record knows) is still working.
RUNNING: Final = "running"
#: The with-block (or the entry) returned and cleanup ran.
COMPLETED: Final = "completed"
#: An exception ended it: a lifecycle step's or the user's.
FAILED: Final = "failed"
#: A signal or Ctrl-C ended it (the record names which).
INTERRUPTED: Final = "interrupted"
#: It never ran: another launch of the same run held the run lock.
REFUSED: Final = "refused"
#: Its record says running but its process is gone (decided by readers, never written).
CRASHED: Final = "crashed"

#: Every status ``run.json`` can hold.
RECORDED_STATUSES: Final[tuple[RunStatus, ...]] = (
    RUNNING,
    COMPLETED,
    FAILED,
    INTERRUPTED,
    REFUSED,
)
#: Every status a reader can report: the recorded ones and ``crashed``.
STATUSES: Final[tuple[RunStatus, ...]] = (*RECORDED_STATUSES, CRASHED)
#: The order in which a job's ranks decide its status: the first one any rank has wins.
WORST_FIRST: Final[tuple[RunStatus, ...]] = (FAILED, INTERRUPTED, CRASHED, REFUSED, RUNNING)
