"""``LifecycleMachine``: drives the table in ``table.py`` with the ``transitions`` library.

The machine knows nothing about seeding or locks. It is given one callable per step
name; a step does its work and may return an *undo*. Undos are kept on a stack that
the machine alone unwinds: in reverse order on cleanup, and in reverse order when a
later step raises (rollback), after which the machine sits in FAILED. CLEANED and
FAILED are absorbing: the machine is single-use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from functools import partial
from types import FrameType
from typing import Any

import attrs
from transitions import Machine

from orchestrator_fsm.errors import LifecycleError
from orchestrator_fsm.lifecycle.table import (
    ADVANCE,
    CLEANUP,
    CLEANUP_STEP,
    CONDITION_LABELS,
    FAIL,
    MACHINE_STEPS,
    ROLLBACK_STEP,
    TERMINAL_STATES,
    TRANSITIONS,
    LifecycleState,
    advance_path,
    non_terminal_states,
    table_steps,
)

__all__ = ["LifecycleMachine", "Step", "TransitionRecord", "Undo", "describe_error"]

_log = logging.getLogger("orchestrator_fsm.lifecycle")

Undo = Callable[[], None]
#: A step does its work and returns the undo of that work, or None when there is none.
Step = Callable[[], "Undo | None"]
RecordListener = Callable[["TransitionRecord"], None]


def describe_error(exc: BaseException) -> str:
    """``"TypeName: message"``, the form errors take in history and journals."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _add_note(exc: BaseException, note: str) -> None:
    # BaseException.add_note exists from Python 3.11; keep the same attribute before.
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10
        notes = list(getattr(exc, "__notes__", []))
        notes.append(note)
        exc.__notes__ = notes


@attrs.frozen
class TransitionRecord:
    """One attempted transition: what ran, when, for how long, and how it ended."""

    source: LifecycleState
    dest: LifecycleState
    trigger: str
    step: str
    started_at: datetime
    duration_s: float
    ok: bool
    error: str | None = None
    rank: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form, as written to ``lifecycle.jsonl``."""
        return {
            "source": self.source.value,
            "dest": self.dest.value,
            "trigger": self.trigger,
            "step": self.step,
            "started_at": self.started_at.isoformat(),
            "duration_s": self.duration_s,
            "ok": self.ok,
            "error": self.error,
            "rank": self.rank,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TransitionRecord:
        """The record of one ``lifecycle.jsonl`` line (``KeyError``/``ValueError`` when
        it is not one)."""
        error = data.get("error")
        return cls(
            source=LifecycleState(data["source"]),
            dest=LifecycleState(data["dest"]),
            trigger=str(data["trigger"]),
            step=str(data["step"]),
            started_at=datetime.fromisoformat(str(data["started_at"])),
            duration_s=float(data["duration_s"]),
            ok=bool(data["ok"]),
            error=None if error is None else str(error),
            rank=int(data.get("rank", 0)),
        )


class _Model:
    """The object whose state ``transitions`` manages; trigger methods are bound to it.

    Each predicate the table names is an attribute of the model holding its truth value
    for this run; ``transitions`` resolves conditions by name on the model.
    """

    fsm_state: LifecycleState


class LifecycleMachine:
    """The run's lifecycle as a finite state machine.

    ``steps`` maps each step name of the table to the callable doing it; a callable for
    the cleanup step is optional and runs first when cleaning up, before the undos.
    ``advance()`` performs exactly one step; ``run_until(state)`` advances until ``state`` is
    reached; ``cleanup()`` unwinds every registered undo and ends in CLEANED. When a
    step raises anything (``KeyboardInterrupt`` included), the undos run in reverse
    order, the machine moves to FAILED and the original exception propagates.

    Not thread-safe: drive one machine from one thread.
    """

    def __init__(
        self,
        steps: Mapping[str, Step],
        *,
        is_main_process: bool = True,
        rank: int = 0,
        listeners: Iterable[RecordListener] = (),
        logger: logging.Logger | None = None,
    ) -> None:
        missing = [name for name in table_steps() if name not in steps]
        if missing:
            raise LifecycleError(f"LifecycleMachine needs a callable for steps {missing}")
        unknown = sorted(set(steps) - set(table_steps()) - {CLEANUP_STEP})
        if unknown:
            raise LifecycleError(f"the transition table has no steps named {unknown}")
        facts = {"is_main_process": is_main_process}
        if set(facts) != set(CONDITION_LABELS):  # pragma: no cover - a table edit
            raise LifecycleError(
                f"the transition table names conditions {sorted(CONDITION_LABELS)}; "
                f"the machine knows {sorted(facts)}"
            )
        self._steps = dict(steps)
        self._is_main_process = is_main_process
        self._rank = rank
        self._listeners = list(listeners)
        self._logger = logger or _log
        self._undos: list[tuple[str, Undo]] = []
        self._history: list[TransitionRecord] = []
        self._busy = False
        self._path = advance_path(is_main_process)
        self._model = _Model()
        for name, value in facts.items():
            setattr(self._model, name, value)
        self._machine = Machine(
            model=self._model,
            states=list(LifecycleState),
            initial=LifecycleState.CREATED,
            transitions=[self._compile(spec) for spec in TRANSITIONS],
            auto_transitions=False,
            send_event=False,
            model_attribute="fsm_state",
        )
        self._triggers: dict[str, Callable[[], bool]] = {
            name: getattr(self._model, name) for name in (ADVANCE, CLEANUP, FAIL)
        }
        # Filled by the `before` callback of the transition being taken, read on error.
        self._attempt: tuple[str, LifecycleState] | None = None
        # What went wrong while unwinding during cleanup (recorded, never raised) and an
        # interrupt met there, re-raised once the machine has reached CLEANED.
        self._unwind_problems: str | None = None
        self._deferred_interrupt: BaseException | None = None
        self._recording = False
        # The exception that ended the run early: a failing step, an error the caller
        # reported to cleanup(), or an interrupt met while cleaning up.
        self._ended_by: BaseException | None = None
        self._ended_in: str | None = None

    def _compile(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Turn one table entry into the keyword arguments of a ``transitions`` Transition."""
        source: Any = (
            list(non_terminal_states()) if spec["source"] == "*" else LifecycleState(spec["source"])
        )
        dest = LifecycleState(spec["dest"])
        compiled: dict[str, Any] = {
            "trigger": spec["trigger"],
            "source": source,
            "dest": dest,
            "before": [partial(self._run_step, spec["step"], dest)],
        }
        for key in ("conditions", "unless"):
            if key in spec:
                compiled[key] = [spec[key]]
        return compiled

    # -- read-only views -------------------------------------------------------------

    @property
    def state(self) -> LifecycleState:
        return self._model.fsm_state

    @property
    def history(self) -> list[TransitionRecord]:
        """Every attempted transition in order (a copy)."""
        return list(self._history)

    @property
    def is_terminal(self) -> bool:
        return self._model.fsm_state in TERMINAL_STATES

    @property
    def is_main_process(self) -> bool:
        return self._is_main_process

    @property
    def ended_by(self) -> BaseException | None:
        """What ended the run early: the error of the step that failed, the error given
        to :meth:`cleanup`, or an interrupt met while cleaning up; None otherwise."""
        return self._ended_by

    @property
    def ended_in(self) -> str | None:
        """The step :attr:`ended_by` came from; None when the caller reported it."""
        return self._ended_in

    def note_interrupt(self, interrupt: BaseException) -> None:
        """Record ``interrupt``, met while cleaning up, as what ended the run (unless
        something already did); the caller raises it once cleanup is over."""
        if self._ended_by is None:
            self._ended_by, self._ended_in = interrupt, CLEANUP_STEP

    def defers_interrupt(self, frame: FrameType | None, interrupt: BaseException) -> bool:
        """Whether ``interrupt``, raised by a signal handler with ``frame`` innermost,
        is kept until the current transition is complete (True) instead of raised now.

        An interrupt is kept while the machine does its own bookkeeping (between a step
        returning and its undo being registered, while rolling back, while telling the
        listeners, which write the run record) and raised at the end of the transition;
        anywhere else, including inside a step, it is raised at once.
        """
        if not self._busy:
            return False
        if not (self._recording or (frame is not None and frame.f_code in _BOOKKEEPING)):
            return False
        if self._deferred_interrupt is None:
            self._deferred_interrupt = interrupt
        return True

    def can_advance(self) -> bool:
        return not self.is_terminal

    def next_state(self) -> LifecycleState | None:
        """Where ``advance()`` would go from here on this rank, or None when terminal."""
        if self.is_terminal:
            return None
        index = self._path.index(self._model.fsm_state)
        return self._path[index + 1]

    def add_listener(self, listener: RecordListener) -> None:
        """Call ``listener(record)`` after every transition record from now on."""
        self._listeners.append(listener)

    # -- driving -----------------------------------------------------------------------

    def advance(self) -> LifecycleState:
        """Perform exactly one step and return the new state."""
        self._require_live(ADVANCE)
        self._fire(ADVANCE)
        return self._model.fsm_state

    def run_until(self, target: LifecycleState | str) -> LifecycleState:
        """Advance until ``target``; a no-op when the run is already at or past it."""
        self._require_live("run_until")
        target = LifecycleState(target)
        if target not in self._path:
            rank = "rank 0" if self._is_main_process else f"rank {self._rank}"
            raise LifecycleError(
                f"state {target.value!r} is not on the lifecycle path of {rank}: "
                f"{' -> '.join(s.value for s in self._path)}"
            )
        goal = self._path.index(target)
        while self._path.index(self._model.fsm_state) < goal:
            self._fire(ADVANCE)
        return self._model.fsm_state

    def cleanup(self, ended_by: BaseException | None = None) -> LifecycleState:
        """Unwind every undo and end in CLEANED; a no-op once the run is terminal.

        ``ended_by`` is the exception that stopped the caller's work early, if any; it
        becomes :attr:`ended_by`, from which the run's outcome is derived.
        """
        if self.is_terminal:
            return self._model.fsm_state
        if self._busy:
            raise LifecycleError("cleanup() called while a step is running")
        if ended_by is not None and self._ended_by is None:
            self._ended_by = ended_by
        self._fire(CLEANUP)
        return self._model.fsm_state

    def _require_live(self, what: str) -> None:
        if self.is_terminal:
            raise LifecycleError(
                f"{what}() in terminal state {self._model.fsm_state.value!r}: a lifecycle "
                "is single-use; create a new one for another run"
            )
        if self._busy:
            raise LifecycleError(f"{what}() called while a step is running (re-entrant use)")

    def _fire(self, trigger: str) -> None:
        self._fire_step(trigger)

    def _fire_step(self, trigger: str) -> None:
        self._busy = True
        self._attempt = None
        source = self._model.fsm_state
        started_at = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        try:
            moved = self._triggers[trigger]()
        except BaseException as exc:
            duration = time.perf_counter() - t0
            step, dest = self._attempt or (trigger, source)
            late = self._deferred_interrupt
            if late is not None and late is not exc:
                # A signal kept while this step was failing: the run ends anyway.
                _add_note(exc, f"also interrupted while failing: {describe_error(late)}")
            self._record(source, dest, trigger, step, started_at, duration, describe_error(exc))
            if step in MACHINE_STEPS:
                # Cleanup itself can only fail through its own hook or a re-raised
                # interrupt; the undos have run, so the run still ends CLEANED.
                self._busy = False
                raise
            self._fail(exc, step)
            self._deferred_interrupt = None
            raise
        else:
            if not moved:  # pragma: no cover - the table always offers a way on
                raise LifecycleError(f"no {trigger!r} transition from {source.value!r}")
            step, dest = self._attempt or (trigger, self._model.fsm_state)
            if self._deferred_interrupt is not None and self._ended_by is None:
                self._ended_by, self._ended_in = self._deferred_interrupt, step
            self._record(
                source,
                dest,
                trigger,
                step,
                started_at,
                time.perf_counter() - t0,
                self._unwind_problems,
            )
        finally:
            self._busy = False
        interrupt, self._deferred_interrupt = self._deferred_interrupt, None
        if interrupt is not None:
            if self._ended_by is None:  # kept while the listeners were told
                self._ended_by, self._ended_in = interrupt, step
            raise interrupt

    def _run_step(self, step: str, dest: LifecycleState) -> None:
        self._attempt = (step, dest)
        self._unwind_problems = None
        if step == CLEANUP_STEP:
            self._cleanup_step()
            return
        if step == ROLLBACK_STEP:
            return  # unwinding on failure happens in _fail, with the original error
        undo = None
        try:
            undo = self._steps[step]()
        finally:
            # Registered even when an interrupt lands right after the step returned, so
            # what the step did (a lock taken) is still undone by the rollback.
            if undo is not None:
                self._undos.append((step, undo))

    def _cleanup_step(self) -> None:
        hook = self._steps.get(CLEANUP_STEP)
        hook_error: BaseException | None = None
        if hook is not None:
            try:
                hook()
            except BaseException as exc:
                hook_error = exc
                self._logger.error("cleanup hook failed: %s", describe_error(exc))
        failures = self._unwind()
        problems = [f"undo of {name} failed: {describe_error(e)}" for name, e in failures]
        if hook_error is not None:
            problems.insert(0, f"cleanup hook failed: {describe_error(hook_error)}")
        self._unwind_problems = "; ".join(problems) or None
        errors = [e for _, e in failures]
        if hook_error is not None:
            errors.insert(0, hook_error)
        # An interrupt met while unwinding must not be swallowed, but every undo has to
        # run and the move to CLEANED has to happen first: `_fire` re-raises it after.
        self._deferred_interrupt = next((e for e in errors if not isinstance(e, Exception)), None)

    def _fail(self, original: BaseException, step: str) -> None:
        """Roll back after ``original`` was raised by a step, then move to FAILED."""
        started_at = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        source = self._model.fsm_state
        if self._ended_by is None:
            self._ended_by, self._ended_in = original, step
        self._recording = True  # signals wait until the rollback is recorded
        try:
            failures = self._unwind()
            for name, error in failures:
                note = f"during rollback, undo of {name} failed: {describe_error(error)}"
                _add_note(original, note)
            self._triggers[FAIL]()
            problems = "; ".join(
                f"undo of {name} failed: {describe_error(e)}" for name, e in failures
            )
            self._record(
                source,
                LifecycleState.FAILED,
                FAIL,
                ROLLBACK_STEP,
                started_at,
                time.perf_counter() - t0,
                problems or None,
            )
        finally:
            self._recording = False

    def _unwind(self) -> list[tuple[str, BaseException]]:
        failures: list[tuple[str, BaseException]] = []
        while self._undos:
            name, undo = self._undos.pop()
            try:
                undo()
            except BaseException as exc:  # each undo is isolated from the others
                failures.append((name, exc))
                self._logger.error("undo of step %r failed: %s", name, describe_error(exc))
        return failures

    def _record(
        self,
        source: LifecycleState,
        dest: LifecycleState,
        trigger: str,
        step: str,
        started_at: datetime,
        duration_s: float,
        error: str | None,
    ) -> None:
        record = TransitionRecord(
            source=source,
            dest=dest,
            trigger=trigger,
            step=step,
            started_at=started_at,
            duration_s=duration_s,
            ok=error is None,
            error=error,
            rank=self._rank,
        )
        self._history.append(record)
        recording, self._recording = self._recording, True
        try:
            for listener in self._listeners:
                try:
                    listener(record)
                except Exception as exc:
                    self._logger.warning("transition listener failed: %s", describe_error(exc))
        finally:
            self._recording = recording


# The machine's own code: a signal landing here (not inside a step) is kept until the
# transition is complete; see LifecycleMachine.defers_interrupt.
_BOOKKEEPING = frozenset(
    method.__code__
    for method in (
        LifecycleMachine._fire,
        LifecycleMachine._run_step,
        LifecycleMachine._fail,
        LifecycleMachine._unwind,
        LifecycleMachine._record,
    )
)
