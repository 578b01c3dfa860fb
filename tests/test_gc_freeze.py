"""Our own work runs with the objects that existed before it frozen (``_gc.py``).

Checked through what the collector itself reports: ``gc.get_freeze_count()`` and
``gc.get_objects()`` (which lists no frozen object), never through timing.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Callable, Iterator

import pytest

from orchestrator_fsm._gc import GC_FREEZE_ENV, collector_paused, objects_before_frozen
from orchestrator_fsm.lifecycle.machine import LifecycleMachine, Undo
from orchestrator_fsm.lifecycle.table import LifecycleState, table_steps


class _Node:
    """A container that can be part of a reference cycle and be weakly referenced."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    """Make a two-object reference cycle that nothing else holds; a weak ref to it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def _is_tracked(obj: object) -> bool:
    return any(candidate is obj for candidate in gc.get_objects())


@pytest.fixture(autouse=True)
def _collector_as_found(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(GC_FREEZE_ENV, raising=False)
    was_enabled = gc.isenabled()
    gc.enable()
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()
    if not was_enabled:
        gc.disable()


def test_objects_from_before_are_frozen_inside_and_back_after() -> None:
    before = _Node()
    with objects_before_frozen():
        assert gc.get_freeze_count() > 0
        assert not _is_tracked(before)
        made_inside = _Node()
        assert _is_tracked(made_inside)
    assert gc.get_freeze_count() == 0
    assert _is_tracked(before)


def test_garbage_from_before_is_still_collected_afterwards() -> None:
    ref = _cycle()
    with objects_before_frozen():
        gc.collect()
        assert ref() is not None  # frozen: a collection inside does not look at it
    gc.collect()
    assert ref() is None


def test_a_nested_use_leaves_the_freeze_to_the_outer_one() -> None:
    with objects_before_frozen():
        frozen = gc.get_freeze_count()
        with objects_before_frozen():
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
    assert gc.get_freeze_count() == 0


def test_someone_elses_freeze_is_left_alone() -> None:
    gc.freeze()
    theirs = gc.get_freeze_count()
    with objects_before_frozen():
        pass
    assert gc.get_freeze_count() == theirs


def test_a_disabled_collector_is_left_disabled_and_nothing_frozen() -> None:
    gc.disable()
    with objects_before_frozen():
        assert gc.get_freeze_count() == 0
    assert not gc.isenabled()


def test_the_environment_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GC_FREEZE_ENV, "0")
    with objects_before_frozen():
        assert gc.get_freeze_count() == 0


def test_an_exception_inside_still_unfreezes() -> None:
    with pytest.raises(RuntimeError), objects_before_frozen():
        raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0


def test_collector_paused_restores_the_state_it_found() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_lifecycle_steps_run_frozen_and_the_code_between_them_does_not() -> None:
    seen: dict[str, int] = {}

    def make(name: str) -> Callable[[], Undo | None]:
        def step() -> Undo:
            seen[name] = gc.get_freeze_count()
            return lambda: seen.__setitem__(f"undo {name}", gc.get_freeze_count())

        return step

    machine = LifecycleMachine({name: make(name) for name in table_steps()})
    while machine.state is not LifecycleState.REPORTED:
        machine.advance()
        assert gc.get_freeze_count() == 0  # the caller's code between steps
    machine.cleanup()
    assert gc.get_freeze_count() == 0
    assert seen and all(count > 0 for count in seen.values()), seen


def test_a_failing_step_rolls_back_frozen_and_unfreezes() -> None:
    counts: list[int] = []

    def ok() -> Undo:
        return lambda: counts.append(gc.get_freeze_count())

    def boom() -> None:
        raise OSError("disk on fire")

    steps: dict[str, Callable[[], Undo | None]] = {name: ok for name in table_steps()}
    steps["provision"] = boom
    machine = LifecycleMachine(steps)
    with pytest.raises(OSError, match="disk on fire"):
        machine.run_until(LifecycleState.READY)
    assert machine.state is LifecycleState.FAILED
    assert counts and all(count > 0 for count in counts)
    assert gc.get_freeze_count() == 0


def test_importing_the_package_lazily_unfreezes_when_done() -> None:
    # A fresh interpreter: the package's modules are imported through its lazy names.
    script = textwrap.dedent(
        """
        import gc, weakref

        class Node:
            other = None

        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
        import orchestrator_fsm
        orchestrator_fsm.Config, orchestrator_fsm.RootOrchestrator
        assert gc.get_freeze_count() == 0, gc.get_freeze_count()
        gc.collect()
        assert ref() is None, "garbage from before the import was never collected"
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
