"""What the run recorder tells whoever mirrors the run elsewhere.

The recorder knows nothing of observers: it is given one :class:`RunListener` (the
orchestrator wires the run's observers in as ``observers.Observers``) and tells it,
after its own write, what it wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from orchestrator_fsm.lifecycle.machine import TransitionRecord
    from orchestrator_fsm.lifecycle.record import RunRecord

__all__ = ["NoListener", "RunListener"]


class RunListener(Protocol):
    """What the recorder tells, after its own write, whoever mirrors the run elsewhere
    (the orchestrator wires the run's observers in: ``observers.Observers``)."""

    def run_started(self, record: RunRecord) -> None:
        """The first record is written."""

    def transition(self, step: TransitionRecord) -> None:
        """The machine took a step."""

    def metrics(self, values: Mapping[str, float], step: int | None) -> None:
        """A metrics line is written."""

    def summary(self, values: Mapping[str, float]) -> None:
        """A summary line is written."""

    def run_ended(self, record: RunRecord) -> None:
        """The final record is written."""

    def tracker_links(self) -> dict[str, dict[str, str]]:
        """Where the run is mirrored, by tracker (kept in the record's ``trackers``)."""
        ...


class NoListener:
    """A listener that is told everything and does nothing."""

    def run_started(self, record: RunRecord) -> None:
        pass

    def transition(self, step: TransitionRecord) -> None:
        pass

    def metrics(self, values: Mapping[str, float], step: int | None) -> None:
        pass

    def summary(self, values: Mapping[str, float]) -> None:
        pass

    def run_ended(self, record: RunRecord) -> None:
        pass

    def tracker_links(self) -> dict[str, dict[str, str]]:
        return {}
