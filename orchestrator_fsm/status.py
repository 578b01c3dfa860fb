"""The run status vocabulary: the one owner of the words ``run.json``, ``runs``,
``inspect``, sweeps and observers use for how a run stands or ended.

``run.json`` holds one of :data:`RECORDED_STATUSES`; readers add ``crashed`` for a
``running`` record whose process is gone (see ``lifecycle.record.infer_status``).

A run a signal ended is one of :data:`INTERRUPTIONS`: ``cancelled``, ``preempted`` or
``timeout`` when something besides the signal told why (the scheduler, the terminal;
see ``lifecycle/ending.py``), ``interrupted`` (the reference's word) when only the
signal is known.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "CRASHED",
    "FAILED",
    "INTERRUPTED",
    "INTERRUPTIONS",
    "PREEMPTED",
    "RECORDED_STATUSES",
    "REFUSED",
    "RUNNING",
    "STATUSES",
    "TIMEOUT",
    "WORST_FIRST",
    "RunStatus",
]

RunStatus = Literal[
    "running",
    "completed",
    "failed",
    "interrupted",
    "cancelled",
    "preempted",
    "timeout",
    "refused",
    "crashed",
]

#: Live: its process (as far as the record knows) is still working.
RUNNING: Final = "running"
#: The with-block (or the entry) returned and cleanup ran.
COMPLETED: Final = "completed"
#: An exception ended it: a lifecycle step's or the user's.
FAILED: Final = "failed"
#: A signal ended it and nothing told why (the record names the signal).
INTERRUPTED: Final = "interrupted"
#: A person stopped it: ``scancel`` (the scheduler says CANCELLED), Ctrl-C at its terminal.
CANCELLED: Final = "cancelled"
#: The scheduler took its resources back: a preemption or a requeue; it may come back.
PREEMPTED: Final = "preempted"
#: It reached its time limit (the scheduler says TIMEOUT, or the end time it announced).
TIMEOUT: Final = "timeout"
#: It never ran: another launch of the same run held the run lock.
REFUSED: Final = "refused"
#: Its record says running but its process is gone (decided by readers, never written).
CRASHED: Final = "crashed"

#: The statuses of a run a signal ended, the most specific first.
INTERRUPTIONS: Final[tuple[RunStatus, ...]] = (TIMEOUT, PREEMPTED, CANCELLED, INTERRUPTED)
#: Every status ``run.json`` can hold.
RECORDED_STATUSES: Final[tuple[RunStatus, ...]] = (
    RUNNING,
    COMPLETED,
    FAILED,
    *INTERRUPTIONS,
    REFUSED,
)
#: Every status a reader can report: the recorded ones and ``crashed``.
STATUSES: Final[tuple[RunStatus, ...]] = (*RECORDED_STATUSES, CRASHED)
#: The order in which a job's ranks decide its status: the first one any rank has wins.
WORST_FIRST: Final[tuple[RunStatus, ...]] = (FAILED, *INTERRUPTIONS, CRASHED, REFUSED, RUNNING)
