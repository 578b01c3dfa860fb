"""Observers: objects told what a run does, to mirror it elsewhere (a tracker, a dashboard).

An observer is any object with some of the methods of :class:`Observer`; subclassing it
gives no-op defaults for the rest. The run recorder calls them, on the rank they were
given to, after its own write: ``run_started(record)`` once the first record is on
disk, ``transition(step)`` for each step of the machine, ``metrics(values, step)`` and
``summary(values)`` for each ``log_metrics`` / ``log_summary`` call, and
``run_ended(record)`` with the final record (its status is the run's true final one).
An observer that raises is reported once per method (one ``orchestrator-fsm: observer
... failed`` line on stderr, like the recorder's own write failures: the run's log may
be closed by then) and called again next time; it never breaks the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Final, Protocol, TypeGuard, runtime_checkable

from orchestrator_fsm._specs import KNOWN_OBSERVERS
from orchestrator_fsm._system import say_on_stderr

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.lifecycle.machine import TransitionRecord
    from orchestrator_fsm.lifecycle.record import RunRecord

__all__ = [
    "OBSERVER_METHODS",
    "Observer",
    "Observers",
    "TrackerLink",
    "configured_observers",
    "links_a_tracker",
]

#: What an observer may be told, in the order a run tells it.
OBSERVER_METHODS: Final = ("run_started", "transition", "metrics", "summary", "run_ended")


def configured_observers(cfg: Config) -> list[object]:
    """The observers ``telemetry.observers`` names: ``factory(cfg, **options)`` for each.

    Raises ``ConfigError`` at ``telemetry.observers.<spec>`` when a factory cannot be
    imported or raises."""
    from orchestrator_fsm.config.problems import config_error
    from orchestrator_fsm.config.sections import DICT_SOURCE_LABEL
    from orchestrator_fsm.entry import entry_search_path, resolve_callable
    from orchestrator_fsm.errors import EntryPointError

    observers: list[object] = []
    for spec, options in cfg.telemetry.observers.items():
        try:
            target = KNOWN_OBSERVERS.get(spec, spec)
            with entry_search_path(target):
                factory = resolve_callable(
                    target, named_by="observer", takes="the config and the observer's options"
                )
            observers.append(factory(cfg, **options))
        except Exception as exc:
            label = str(cfg.source) if cfg.source is not None else DICT_SOURCE_LABEL
            source = None if cfg.source is None else label
            problem = (
                str(exc)
                if isinstance(exc, EntryPointError)
                else (f"{spec} raised {type(exc).__name__}: {exc}")
            )
            raise config_error(label, [(f"telemetry.observers.{spec}", problem)], source) from exc
    return observers


class Observer:
    """An observer that does nothing: override the methods you need."""

    def run_started(self, record: RunRecord) -> None:
        """The run's first record is written (the run directory exists)."""

    def transition(self, step: TransitionRecord) -> None:
        """The machine took a step (the line just appended to ``lifecycle.jsonl``)."""

    def metrics(self, values: Mapping[str, float], step: int | None) -> None:
        """``log_metrics(values, step)`` was called and its line written."""

    def summary(self, values: Mapping[str, float]) -> None:
        """``log_summary(values)`` was called and its line written."""

    def run_ended(self, record: RunRecord) -> None:
        """The final record is written: ``record.status`` is how the run ended."""


@runtime_checkable
class TrackerLink(Protocol):
    """An observer that mirrors the run into a tracker and can say where, once the run
    started: ``(tracker name, {"tracking_uri": ..., "run_id": ...})``, or None. The
    recorder keeps it in the record's ``trackers`` so a crashed run can be reconciled."""

    def tracker_link(self) -> tuple[str, Mapping[str, str]] | None: ...


def links_a_tracker(observer: object) -> TypeGuard[TrackerLink]:
    """Whether ``observer`` can say where it mirrors the run (:class:`TrackerLink`)."""
    return isinstance(observer, TrackerLink)


class Observers:
    """The observers of one run, each called in turn; failures reported once each.

    It is what the run recorder is told (``lifecycle.listener.RunListener``): the
    orchestrator hands it to the recorder, which knows nothing of observers."""

    def __init__(
        self, observers: Iterable[object] = (), report: Callable[[str], None] = say_on_stderr
    ) -> None:
        self._observers = tuple(observers)
        self._report_line = report
        self._failed: set[tuple[int, str]] = set()

    def __bool__(self) -> bool:
        return bool(self._observers)

    def notify(self, method: str, *args: object) -> None:
        """Call ``method(*args)`` on every observer that has it."""
        for index, observer in enumerate(self._observers):
            call = getattr(observer, method, None)
            if call is None:
                continue
            try:
                call(*args)
            except Exception as exc:
                self._report(index, observer, method, exc)

    def run_started(self, record: RunRecord) -> None:
        self.notify("run_started", record)

    def transition(self, step: TransitionRecord) -> None:
        self.notify("transition", step)

    def metrics(self, values: Mapping[str, float], step: int | None) -> None:
        self.notify("metrics", values, step)

    def summary(self, values: Mapping[str, float]) -> None:
        self.notify("summary", values)

    def run_ended(self, record: RunRecord) -> None:
        self.notify("run_ended", record)

    def tracker_links(self) -> dict[str, dict[str, str]]:
        """Where the observers that are :class:`TrackerLink` mirror the run, by tracker."""
        links: dict[str, dict[str, str]] = {}
        for index, observer in enumerate(self._observers):
            if not links_a_tracker(observer):
                continue
            try:
                link = observer.tracker_link()
            except Exception as exc:
                self._report(index, observer, "tracker_link", exc)
                continue
            if link is not None:
                links[link[0]] = {str(key): str(value) for key, value in link[1].items()}
        return links

    def _report(self, index: int, observer: object, method: str, exc: Exception) -> None:
        if (index, method) in self._failed:
            return
        self._failed.add((index, method))
        self._report_line(
            f"observer {type(observer).__name__}.{method} failed "
            f"({type(exc).__name__}: {exc}); the run goes on"
        )
