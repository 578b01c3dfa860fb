"""``LifecycleMachine``: the table in ``table.py`` run by the ``transitions`` library.

The machine knows nothing about seeding or locks. It is given one callable per step
name; a step does its work and may return an *undo*. Undos are kept on a stack that
the machine alone unwinds: in reverse order on cleanup, and in reverse order when a
later step raises (rollback), after which the machine sits in FAILED. CLEANED and
FAILED are final: the machine is single-use.

The table goes into ``transitions`` as it is: each entry becomes a transition that
carries its ``step``. The machine's hooks do the rest: ``before_state_change`` does the
transition's step, ``after_state_change`` records the move, ``on_exception`` records the
failed step, rolls back, lands in FAILED and raises the error again.

A signal must not cut the machine's own work short. The code doing it is marked where
it is written (``@_keeps_signals``); the signal handler asks
:meth:`LifecycleMachine.defers_interrupt`, which walks out from the interrupted frame
to the first marked one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from types import CodeType, FrameType
from typing import Any, TypeVar

import attrs
from transitions import EventData, Machine, Transition

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
    condition_facts,
    table_steps,
)

__all__ = ["LifecycleMachine", "Step", "TransitionRecord", "Undo", "describe_error"]

_log = logging.getLogger("orchestrator_fsm.lifecycle")

Undo = Callable[[], None]
#: A step does its work and returns the undo of that work, or None when there is none.
Step = Callable[[], "Undo | None"]
RecordListener = Callable[["TransitionRecord"], None]

_F = TypeVar("_F", bound=Callable[..., Any])

#: The machine's own code, which a signal must not cut, by code object: True where
#: what it calls is covered too, False where only its own lines are.
_KEEPS_SIGNALS: dict[CodeType, bool] = {}


def _keeps_signals(*, callees: bool) -> Callable[[_F], _F]:
    """Mark a function as code in which an interrupt is kept until the transition is
    complete (see :meth:`LifecycleMachine.defers_interrupt`); with ``callees=False``,
    what it calls (a step) can still be interrupted."""

    def mark(function: _F) -> _F:
        _KEEPS_SIGNALS[function.__code__] = callees
        return function

    return mark


def _lands_in_kept_code(frame: FrameType | None) -> bool:
    """Whether a signal arriving with ``frame`` innermost lands in marked code: the first
    marked frame walking outwards decides, covering a frame it called only if it covers
    its callees."""
    innermost = True
    while frame is not None:
        callees = _KEEPS_SIGNALS.get(frame.f_code)
        if callees is not None:
            return innermost or callees
        frame, innermost = frame.f_back, False
    return False


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
    """One attempted transition: what ran, when, for how long, and how it ended.

    ``exception`` is the exception a failed step raised, as the listeners are told of
    it (its traceback included); it is not written to ``lifecycle.jsonl``, so a record
    read back has None.
    """

    source: LifecycleState
    dest: LifecycleState
    trigger: str
    step: str
    started_at: datetime
    duration_s: float
    ok: bool
    error: str | None = None
    rank: int = 0
    exception: BaseException | None = attrs.field(default=None, eq=False, repr=False)

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


class _StepTransition(Transition):
    """A table entry as ``transitions`` holds it: the stock transition plus the entry's
    ``step`` (the work done while moving) and ``label`` (how people read it)."""

    def __init__(self, *args: Any, step: str, label: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step = step
        self.label = label


class _TableMachine(Machine):
    """``transitions``' machine for the table: its entries become ``_StepTransition``s,
    and a ``"*"`` source is every state a run can leave (none that is final)."""

    transition_cls = _StepTransition

    def add_transition(self, trigger: str, source: Any, *args: Any, **kwargs: Any) -> None:
        if source == self.wildcard_all:
            source = [name for name, state in self.states.items() if not state.final]
        super().add_transition(trigger, source, *args, **kwargs)


class _Model:
    """The object whose state ``transitions`` manages; trigger methods are bound to it.

    Each predicate the table names is an attribute of the model holding its truth value
    for this run; ``transitions`` resolves conditions by name on the model.
    """

    fsm_state: str


@attrs.define
class _Move:
    """What one trigger carries to the machine's hooks (its ``move`` keyword, in
    ``EventData.kwargs``): when it began, the step error a rollback is for, and what
    went wrong while unwinding (the error of a cleanup's or a rollback's record)."""

    failed: BaseException | None = None
    problems: str | None = None
    started_at: datetime = attrs.field(factory=lambda: datetime.now(timezone.utc))
    t0: float = attrs.field(factory=time.perf_counter)


def _transition(event: EventData) -> _StepTransition:
    transition = event.transition
    assert isinstance(transition, _StepTransition)
    return transition


def _move(event: EventData) -> _Move:
    move = event.kwargs["move"]
    assert isinstance(move, _Move)
    return move


def _describe(failures: Iterable[tuple[str, BaseException]]) -> str | None:
    return "; ".join(f"{what} failed: {describe_error(error)}" for what, error in failures) or None


class LifecycleMachine:
    """The run's lifecycle as a finite state machine.

    ``steps`` maps each step name of the table to the callable doing it; a callable for
    the cleanup step is optional and runs first when cleaning up, before the undos.
    ``advance()`` performs exactly one step; ``run_until(state)`` advances until ``state`` is
    reached; ``cleanup()`` unwinds every registered undo and ends in CLEANED. When a
    step raises anything (``KeyboardInterrupt`` included), the undos run in reverse
    order, the machine moves to FAILED and the original exception propagates.
    ``is_main_process`` and ``in_rank_0s_job`` give the table's conditions their values
    (see :func:`~orchestrator_fsm.lifecycle.table.condition_facts`).

    Not thread-safe: drive one machine from one thread.
    """

    def __init__(
        self,
        steps: Mapping[str, Step],
        *,
        is_main_process: bool = True,
        in_rank_0s_job: bool = True,
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
        facts = condition_facts(is_main_process, in_rank_0s_job)
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
        self._path = advance_path(is_main_process, in_rank_0s_job)
        # Whether a trigger is being processed (re-entrant use is refused, signals may be
        # kept), an interrupt kept until it is complete, and what ended the run early
        # (a failing step's error, the caller's, or an interrupt) with its step.
        self._busy = False
        self._kept: BaseException | None = None
        self._ended: tuple[BaseException, str | None] | None = None
        self._model = _Model()
        for name, value in facts.items():
            setattr(self._model, name, value)
        self._machine = _TableMachine(
            model=self._model,
            states=[{"name": s.value, "final": s in TERMINAL_STATES} for s in LifecycleState],
            initial=LifecycleState.CREATED.value,
            transitions=TRANSITIONS,
            auto_transitions=False,
            send_event=True,
            model_attribute="fsm_state",
            before_state_change=self._do_step,
            after_state_change=self._moved,
            on_exception=self._step_failed,
        )
        self._triggers: dict[str, Callable[..., bool]] = {
            name: getattr(self._model, name) for name in (ADVANCE, CLEANUP, FAIL)
        }

    # -- read-only views -------------------------------------------------------------

    @property
    def state(self) -> LifecycleState:
        return LifecycleState(self._model.fsm_state)

    @property
    def history(self) -> list[TransitionRecord]:
        """Every attempted transition in order (a copy)."""
        return list(self._history)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def is_main_process(self) -> bool:
        return self._is_main_process

    @property
    def ended_by(self) -> BaseException | None:
        """What ended the run early: the error of the step that failed, the error given
        to :meth:`cleanup`, or an interrupt met while cleaning up; None otherwise."""
        return None if self._ended is None else self._ended[0]

    @property
    def ended_in(self) -> str | None:
        """The step :attr:`ended_by` came from; None when the caller reported it."""
        return None if self._ended is None else self._ended[1]

    def note_interrupt(self, interrupt: BaseException) -> None:
        """Record ``interrupt``, met while cleaning up, as what ended the run (unless
        something already did); the caller raises it once cleanup is over."""
        if self._ended is None:
            self._ended = (interrupt, CLEANUP_STEP)

    def defers_interrupt(self, frame: FrameType | None, interrupt: BaseException) -> bool:
        """Whether ``interrupt``, raised by a signal handler with ``frame`` innermost,
        is kept until the current transition is complete (True) instead of raised now.

        An interrupt is kept while the machine does its own work: the bookkeeping of a
        transition (between a step returning and its undo being registered), rolling
        back, cleaning up, telling the listeners (which write the run record). Anywhere
        else, inside a step included, it is raised at once.
        """
        if not (self._busy and _lands_in_kept_code(frame)):
            return False
        if self._kept is None:
            self._kept = interrupt
        return True

    def can_advance(self) -> bool:
        return not self.is_terminal

    def next_state(self) -> LifecycleState | None:
        """Where ``advance()`` would go from here on this rank, or None when terminal."""
        if self.is_terminal:
            return None
        return self._path[self._path.index(self.state) + 1]

    def add_listener(self, listener: RecordListener) -> None:
        """Call ``listener(record)`` after every transition record from now on."""
        self._listeners.append(listener)

    # -- driving -----------------------------------------------------------------------

    def advance(self) -> LifecycleState:
        """Perform exactly one step and return the new state."""
        self._require_live(ADVANCE)
        self._fire(ADVANCE)
        return self.state

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
        while self._path.index(self.state) < goal:
            self._fire(ADVANCE)
        return self.state

    def cleanup(self, ended_by: BaseException | None = None) -> LifecycleState:
        """Unwind every undo and end in CLEANED; a no-op once the run is terminal.

        ``ended_by`` is the exception that stopped the caller's work early, if any; it
        becomes :attr:`ended_by`, from which the run's outcome is derived.
        """
        if self.is_terminal:
            return self.state
        if self._busy:
            raise LifecycleError("cleanup() called while a step is running")
        if ended_by is not None and self._ended is None:
            self._ended = (ended_by, None)
        self._fire(CLEANUP)
        return self.state

    def _require_live(self, what: str) -> None:
        if self.is_terminal:
            raise LifecycleError(
                f"{what}() in terminal state {self.state.value!r}: a lifecycle "
                "is single-use; create a new one for another run"
            )
        if self._busy:
            raise LifecycleError(f"{what}() called while a step is running (re-entrant use)")

    @_keeps_signals(callees=True)
    def _fire(self, trigger: str) -> None:
        self._busy = True
        try:
            if not self._triggers[trigger](move=_Move()):  # pragma: no cover - a table edit
                raise LifecycleError(f"no {trigger!r} transition from {self.state.value!r}")
        except BaseException as error:
            kept, self._kept = self._kept, None
            if kept is not None and kept is not error:
                # A signal kept while this step was failing: the run ends anyway.
                _add_note(error, f"also interrupted while failing: {describe_error(kept)}")
            raise
        finally:
            self._busy = False
        kept, self._kept = self._kept, None
        if kept is not None:
            if self._ended is None:  # kept while the listeners were told
                self._ended = (kept, self._history[-1].step)
            raise kept

    # -- the hooks transitions calls ------------------------------------------------------

    def _do_step(self, event: EventData) -> None:
        """``before_state_change``: the work of the transition being taken."""
        step = _transition(event).step
        if step == CLEANUP_STEP:
            self._clean_up(_move(event))
        elif step == ROLLBACK_STEP:
            self._roll_back(_move(event))
        else:
            self._perform(step)

    def _moved(self, event: EventData) -> None:
        """``after_state_change``: record the transition just made."""
        if self._kept is not None and self._ended is None:
            # An interrupt kept during this transition ends the run in its step; the
            # record told next (a cleanup's is the run's last) already says so.
            self._ended = (self._kept, _transition(event).step)
        self._record(event, _move(event).problems)

    def _step_failed(self, event: EventData) -> None:
        """``on_exception``: the step of ``event.transition`` raised ``event.error``.

        The failure is recorded (listeners are told before the undos close anything),
        the undos run in reverse order, the machine moves to FAILED and the error is
        raised again.
        """
        error: BaseException | None = event.error
        assert error is not None
        transition = event.transition
        if transition is None or self._model.fsm_state != transition.source:
            # Refused before any step ran, or the move was made and a listener raised
            # on hearing of it: there is no failed step to roll back.
            raise error
        self._record(event, describe_error(error), error)
        step = _transition(event).step
        if step in MACHINE_STEPS:
            # Cleanup fails only through a re-raised interrupt; its undos have run.
            raise error
        if self._ended is None:
            self._ended = (error, step)
        self._triggers[FAIL](move=_Move(failed=error))
        raise error

    # -- the machine's own work ------------------------------------------------------------

    @_keeps_signals(callees=False)
    def _perform(self, step: str) -> None:
        # Its own lines are kept from signals: an interrupt between the step returning
        # and its undo being registered would leave what the step did (a lock taken)
        # with nothing to undo it. The step itself can be interrupted.
        undo = self._steps[step]()
        if undo is not None:
            self._undos.append((step, undo))

    def _clean_up(self, move: _Move) -> None:
        failures: list[tuple[str, BaseException]] = []
        hook = self._steps.get(CLEANUP_STEP)
        if hook is not None:
            try:
                hook()
            except BaseException as exc:
                failures.append(("cleanup hook", exc))
                self._logger.error("cleanup hook failed: %s", describe_error(exc))
        failures += self._unwind()
        move.problems = _describe(failures)
        # An interrupt met while unwinding must not be swallowed, but every undo has to
        # run and the move to CLEANED has to happen first: `_fire` raises it after.
        interrupt = next((e for _, e in failures if not isinstance(e, Exception)), None)
        if interrupt is not None and self._kept is None:
            self._kept = interrupt

    def _roll_back(self, move: _Move) -> None:
        failures = self._unwind()
        if move.failed is not None:
            for what, error in failures:
                note = f"during rollback, {what} failed: {describe_error(error)}"
                _add_note(move.failed, note)
        move.problems = _describe(failures)

    def _unwind(self) -> list[tuple[str, BaseException]]:
        failures: list[tuple[str, BaseException]] = []
        while self._undos:
            name, undo = self._undos.pop()
            try:
                undo()
            except BaseException as exc:  # each undo is isolated from the others
                failures.append((f"undo of {name}", exc))
                self._logger.error("undo of step %r failed: %s", name, describe_error(exc))
        return failures

    def _record(
        self, event: EventData, error: str | None, exception: BaseException | None = None
    ) -> None:
        transition = _transition(event)
        move = _move(event)
        record = TransitionRecord(
            source=LifecycleState(transition.source),
            dest=LifecycleState(transition.dest),
            trigger=event.event.name,
            step=transition.step,
            started_at=move.started_at,
            duration_s=time.perf_counter() - move.t0,
            ok=error is None,
            error=error,
            rank=self._rank,
            exception=exception,
        )
        self._history.append(record)
        for listener in self._listeners:
            try:
                listener(record)
            except Exception as exc:
                self._logger.warning("transition listener failed: %s", describe_error(exc))
