"""The bare LifecycleMachine with no-op steps: table, single use, rollback, history."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator

import pytest

from orchestrator_fsm.errors import LifecycleError, RunInterrupted
from orchestrator_fsm.lifecycle.machine import LifecycleMachine, TransitionRecord, Undo
from orchestrator_fsm.lifecycle.signals import SignalGuard
from orchestrator_fsm.lifecycle.table import (
    ADVANCE,
    CLEANUP_STEP,
    JOIN_STEP,
    ROLLBACK_STEP,
    TERMINAL_STATES,
    TRANSITIONS,
    LifecycleState,
    advance_path,
    table_steps,
)

S = LifecycleState
STEP_NAMES = sorted(table_steps())


def make_steps(
    log: list[str], fail: dict[str, BaseException] | None = None
) -> dict[str, Callable[[], Undo | None]]:
    """Steps that log "do X" / "undo X" and raise where ``fail`` says."""
    fail = fail or {}

    def make(name: str) -> Callable[[], Undo | None]:
        def step() -> Undo:
            log.append(f"do {name}")
            if name in fail:
                raise fail[name]
            return lambda: log.append(f"undo {name}")

        return step

    return {name: make(name) for name in STEP_NAMES}


def test_rank_zero_walks_every_phase_in_table_order() -> None:
    log: list[str] = []
    machine = LifecycleMachine(make_steps(log))
    visited = [machine.state]
    while machine.can_advance():
        visited.append(machine.advance())
    assert tuple(visited) == advance_path(True)
    assert visited[-1] is S.CLEANED
    dos = [entry for entry in log if entry.startswith("do ")]
    assert dos == [
        "do seed",
        "do configure_runtime",
        "do provision",
        "do init_logging",
        "do persist_manifest",
        "do acquire_lock",
        "do resolve_device",
        "do report",
    ]


def test_other_ranks_take_the_guarded_shortcut() -> None:
    log: list[str] = []
    machine = LifecycleMachine(make_steps(log), is_main_process=False, rank=3)
    assert machine.run_until(S.READY) is S.READY
    assert log == [
        "do seed",
        "do configure_runtime",
        "do join",
        "do init_logging",
        "do resolve_device",
    ]
    assert [r.dest for r in machine.history] == [
        S.SEEDED,
        S.CONFIGURED,
        S.PROVISIONED,
        S.LOGGED,
        S.READY,
    ]
    assert all(r.rank == 3 for r in machine.history)


def test_a_rank_outside_rank_0s_job_takes_the_reference_shortcut() -> None:
    log: list[str] = []
    machine = LifecycleMachine(make_steps(log), is_main_process=False, in_rank_0s_job=False, rank=1)
    assert machine.run_until(S.READY) is S.READY
    assert log == ["do seed", "do configure_runtime", "do resolve_device"]
    assert [r.dest for r in machine.history] == [S.SEEDED, S.CONFIGURED, S.READY]
    assert advance_path(False, in_rank_0s_job=False) == (
        S.CREATED,
        S.SEEDED,
        S.CONFIGURED,
        S.READY,
        S.REPORTED,
        S.CLEANED,
    )
    # Rank 0 is in its own job whatever it is told.
    assert advance_path(True, in_rank_0s_job=False) == advance_path(True)


def test_run_until_a_state_off_this_ranks_path_is_refused_before_doing_anything() -> None:
    log: list[str] = []
    machine = LifecycleMachine(make_steps(log), is_main_process=False, rank=1)
    with pytest.raises(LifecycleError, match="not on the lifecycle path"):
        machine.run_until(S.PERSISTED)
    assert log == []
    assert machine.state is S.CREATED


def test_advance_performs_exactly_one_step() -> None:
    log: list[str] = []
    machine = LifecycleMachine(make_steps(log))
    assert machine.next_state() is S.SEEDED
    assert machine.advance() is S.SEEDED
    assert log == ["do seed"]
    assert machine.next_state() is S.CONFIGURED


def test_run_until_is_a_no_op_at_or_past_the_target() -> None:
    log: list[str] = []
    machine = LifecycleMachine(make_steps(log))
    machine.run_until(S.READY)
    count = len(log)
    assert machine.run_until(S.READY) is S.READY
    assert machine.run_until(S.SEEDED) is S.READY
    assert len(log) == count


@pytest.mark.parametrize("trigger", ["advance", "run_until"])
@pytest.mark.parametrize("ending", ["cleanup", "failure"])
def test_terminal_states_are_single_use(trigger: str, ending: str) -> None:
    fail = {"seed": RuntimeError("boom")} if ending == "failure" else None
    machine = LifecycleMachine(make_steps([], fail))
    if ending == "cleanup":
        machine.cleanup()
    else:
        with pytest.raises(RuntimeError):
            machine.advance()
    assert machine.is_terminal
    assert machine.next_state() is None
    assert not machine.can_advance()
    with pytest.raises(LifecycleError, match="single-use"):
        if trigger == "advance":
            machine.advance()
        else:
            machine.run_until(S.READY)
    state = machine.state
    assert machine.cleanup() is state  # cleanup in a terminal state is a no-op


@pytest.mark.parametrize("failing", STEP_NAMES)
def test_a_failing_step_rolls_back_earlier_steps_in_reverse(failing: str) -> None:
    log: list[str] = []
    error = ValueError(f"{failing} broke")
    # Every step fails on a rank whose path takes it (join: ranks other than 0).
    steps = make_steps(log, {failing: error})
    machine = LifecycleMachine(steps, is_main_process=failing != JOIN_STEP)
    with pytest.raises(ValueError) as caught:
        while machine.can_advance():
            machine.advance()
    assert caught.value is error
    assert machine.state is S.FAILED
    done = [e[3:] for e in log if e.startswith("do ")][:-1]  # the failing one never finished
    undone = [e[5:] for e in log if e.startswith("undo ")]
    assert undone == list(reversed(done))
    failed = [r for r in machine.history if not r.ok]
    assert failed[0].step == failing
    assert failed[0].error == f"ValueError: {failing} broke"
    assert machine.history[-1].dest is S.FAILED
    assert machine.history[-1].step == ROLLBACK_STEP


def test_listeners_are_given_the_failing_steps_exception_which_is_not_serialised() -> None:
    error = OSError("disk full")
    seen: list[TransitionRecord] = []
    machine = LifecycleMachine(make_steps([], {"provision": error}), listeners=[seen.append])
    with pytest.raises(OSError):
        machine.run_until(S.READY)
    failed, rollback = seen[-2:]
    assert (failed.step, failed.exception) == ("provision", error)
    assert error.__traceback__ is not None  # the listener can log where it was raised
    assert "exception" not in failed.to_json()
    assert TransitionRecord.from_json(failed.to_json()) == failed
    assert rollback.step == ROLLBACK_STEP and rollback.exception is None
    assert all(record.exception is None for record in seen[:-2])


def test_keyboard_interrupt_in_a_step_rolls_back_and_propagates() -> None:
    log: list[str] = []
    machine = LifecycleMachine(make_steps(log, {"acquire_lock": KeyboardInterrupt()}))
    with pytest.raises(KeyboardInterrupt):
        machine.run_until(S.READY)
    assert machine.state is S.FAILED
    assert log[-5:] == [
        "undo persist_manifest",
        "undo init_logging",
        "undo provision",
        "undo configure_runtime",
        "undo seed",
    ]


def test_a_failing_undo_is_isolated_recorded_and_noted_on_the_original_error() -> None:
    log: list[str] = []
    steps = make_steps(log, {"persist_manifest": OSError("disk full")})

    def broken_logging() -> Undo:
        log.append("do init_logging")

        def undo() -> None:
            raise RuntimeError("handler refused to close")

        return undo

    steps["init_logging"] = broken_logging
    machine = LifecycleMachine(steps)
    with pytest.raises(OSError, match="disk full") as caught:
        machine.run_until(S.READY)
    # the undos before and after the broken one still ran
    assert "undo provision" in log and "undo seed" in log
    notes = getattr(caught.value, "__notes__", [])
    assert any("undo of init_logging failed" in note for note in notes)
    rollback = machine.history[-1]
    assert rollback.step == ROLLBACK_STEP and not rollback.ok
    assert rollback.error is not None and "handler refused to close" in rollback.error


def test_cleanup_runs_the_same_undos_in_reverse_and_ends_cleaned() -> None:
    log: list[str] = []
    machine = LifecycleMachine(make_steps(log))
    machine.run_until(S.GUARDED)
    assert not any(e.startswith("undo") for e in log)
    assert machine.cleanup() is S.CLEANED
    assert [e for e in log if e.startswith("undo")] == [
        "undo acquire_lock",
        "undo persist_manifest",
        "undo init_logging",
        "undo provision",
        "undo configure_runtime",
        "undo seed",
    ]


def test_cleanup_with_a_failing_undo_still_ends_cleaned_and_records_it() -> None:
    log: list[str] = []
    steps = make_steps(log)
    steps["seed"] = lambda: _raise(RuntimeError("cannot restore flags"))
    machine = LifecycleMachine(steps)
    machine.run_until(S.CONFIGURED)
    assert machine.cleanup() is S.CLEANED
    last = machine.history[-1]
    assert last.step == CLEANUP_STEP and not last.ok
    assert last.error is not None and "cannot restore flags" in last.error
    assert "undo configure_runtime" in log


def test_an_interrupt_inside_an_undo_is_re_raised_after_cleanup_completes() -> None:
    log: list[str] = []
    steps = make_steps(log)

    def seed() -> Undo:
        def undo() -> None:
            raise KeyboardInterrupt

        return undo

    steps["seed"] = seed
    machine = LifecycleMachine(steps)
    machine.run_until(S.CONFIGURED)
    with pytest.raises(KeyboardInterrupt):
        machine.cleanup()
    assert machine.state is S.CLEANED
    assert "undo configure_runtime" in log


def _raise(exc: BaseException) -> Undo:
    def undo() -> None:
        raise exc

    return undo


def test_history_records_timings_and_listeners_see_every_record() -> None:
    seen: list[TransitionRecord] = []
    machine = LifecycleMachine(make_steps([]), listeners=[seen.append])
    machine.run_until(S.REPORTED)
    machine.cleanup()
    assert seen == machine.history
    for record in machine.history:
        assert record.duration_s >= 0
        assert record.started_at.tzinfo is not None
        assert record.to_json()["source"] == record.source.value
    assert machine.history[-1].trigger == "cleanup"


def test_a_failing_listener_does_not_break_the_lifecycle() -> None:
    def broken(record: TransitionRecord) -> None:
        raise OSError("journal disk gone")

    machine = LifecycleMachine(make_steps([]), listeners=[broken])
    assert machine.run_until(S.READY) is S.READY


def test_re_entrant_use_from_inside_a_step_is_refused() -> None:
    holder: list[LifecycleMachine] = []
    steps = make_steps([])

    def sneaky() -> None:
        holder[0].advance()

    steps["configure_runtime"] = sneaky
    machine = LifecycleMachine(steps)
    holder.append(machine)
    machine.advance()
    with pytest.raises(LifecycleError, match="re-entrant"):
        machine.advance()
    assert machine.state is S.FAILED


def test_missing_step_callables_are_named() -> None:
    steps = make_steps([])
    del steps["report"]
    with pytest.raises(LifecycleError, match="report"):
        LifecycleMachine(steps)


def test_the_table_is_a_connected_graph_ending_in_terminal_states() -> None:
    states = {spec["dest"] for spec in TRANSITIONS} | {
        spec["source"] for spec in TRANSITIONS if spec["source"] != "*"
    }
    assert states == {s.value for s in LifecycleState}
    advance_sources = [spec["source"] for spec in TRANSITIONS if spec["trigger"] == ADVANCE]
    for state in LifecycleState:
        if state in TERMINAL_STATES:
            assert state.value not in advance_sources
        else:
            assert state.value in advance_sources


@pytest.fixture
def sigterm_to() -> Iterator[Callable[[LifecycleMachine], None]]:
    """Install a SignalGuard for SIGTERM that asks ``machine`` whether to keep it."""
    guards: list[SignalGuard] = []

    def install(machine: LifecycleMachine) -> None:
        guard = SignalGuard(signals=(signal.SIGTERM,), defer=machine.defers_interrupt)
        guard.install()
        guards.append(guard)

    yield install
    for guard in guards:
        guard.restore()


def sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode, in this frame


def test_a_signal_inside_a_step_is_raised_at_once_and_rolls_back(
    sigterm_to: Callable[[LifecycleMachine], None],
) -> None:
    log: list[str] = []
    steps = make_steps(log)

    def signalled() -> None:
        sigterm()
        log.append("configure_runtime went on")

    steps["configure_runtime"] = signalled
    machine = LifecycleMachine(steps)
    sigterm_to(machine)
    with pytest.raises(RunInterrupted):
        machine.run_until(S.READY)
    assert "configure_runtime went on" not in log
    assert log[-1] == "undo seed"
    assert machine.state is S.FAILED
    assert machine.ended_in == "configure_runtime"


def test_a_signal_while_the_listeners_are_told_is_raised_once_the_transition_is_complete(
    sigterm_to: Callable[[LifecycleMachine], None],
) -> None:
    told: list[str] = []

    def listener(record: TransitionRecord) -> None:
        if record.step == "seed":
            sigterm()
        told.append(record.step)  # the record is written to its end

    machine = LifecycleMachine(make_steps([]), listeners=[listener])
    sigterm_to(machine)
    with pytest.raises(RunInterrupted) as caught:
        machine.run_until(S.READY)
    assert told == ["seed"]
    assert machine.state is S.SEEDED
    assert machine.history[-1].ok
    assert (machine.ended_by, machine.ended_in) == (caught.value, "seed")


def seed_whose_undo_is_interrupted(log: list[str]) -> Callable[[], Undo]:
    """A seed step whose undo gets a SIGTERM midway, then logs that it finished."""

    def seed() -> Undo:
        def undo() -> None:
            sigterm()
            log.append("undo seed finished")

        return undo

    return seed


def test_a_signal_during_a_rollback_lets_it_finish_and_is_noted_on_the_error(
    sigterm_to: Callable[[LifecycleMachine], None],
) -> None:
    log: list[str] = []
    steps = make_steps(log, {"provision": ValueError("no room")})

    steps["seed"] = seed_whose_undo_is_interrupted(log)
    machine = LifecycleMachine(steps)
    sigterm_to(machine)
    with pytest.raises(ValueError, match="no room") as caught:
        machine.run_until(S.READY)
    assert log[-2:] == ["undo configure_runtime", "undo seed finished"]
    assert machine.state is S.FAILED
    assert "also interrupted while failing: RunInterrupted: SIGTERM" in caught.value.__notes__
    assert machine.history[-1].step == ROLLBACK_STEP and machine.history[-1].ok


def test_a_signal_during_cleanup_lets_every_undo_finish_then_is_raised(
    sigterm_to: Callable[[LifecycleMachine], None],
) -> None:
    log: list[str] = []
    steps = make_steps(log)

    steps["seed"] = seed_whose_undo_is_interrupted(log)
    machine = LifecycleMachine(steps)
    machine.run_until(S.CONFIGURED)
    sigterm_to(machine)
    with pytest.raises(RunInterrupted) as caught:
        machine.cleanup()
    assert log[-2:] == ["undo configure_runtime", "undo seed finished"]
    assert machine.state is S.CLEANED
    assert machine.history[-1].ok  # the signal cut nothing short
    assert (machine.ended_by, machine.ended_in) == (caught.value, CLEANUP_STEP)


def test_a_signal_outside_a_transition_is_not_kept(
    sigterm_to: Callable[[LifecycleMachine], None],
) -> None:
    machine = LifecycleMachine(make_steps([]))
    machine.advance()
    sigterm_to(machine)
    with pytest.raises(RunInterrupted):
        sigterm()
    assert machine.state is S.SEEDED
    assert machine.ended_by is None
