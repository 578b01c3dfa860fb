"""Property-based lifecycle test: any sequence of driving calls and injected failures
keeps the machine's invariants."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from conftest import minimal_recipe
from fakes import (
    Calls,
    StepFailure,
    fake_dependencies,
    pretend_rank_zero_is_ready,
    process_fingerprint,
)
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orchestrator_fsm.config import Config
from orchestrator_fsm.errors import LifecycleError
from orchestrator_fsm.lifecycle.table import (
    LOCK_HELD_STATES,
    MACHINE_STEPS,
    TERMINAL_STATES,
    TRANSITIONS,
    LifecycleState,
    advance_path,
    non_terminal_states,
)
from orchestrator_fsm.orchestrator import RootOrchestrator

S = LifecycleState
FAKE_CALLS = [
    "seed_setter",
    "thread_applier",
    "system_configurator",
    "static_dir_setup",
    "log_initializer",
    "save_config",
    "dump_requirements",
    "dump_git_info",
    "prepare_environment",
    "device_resolver",
    "log_initial_status",
]
ALLOWED = {
    (spec["trigger"], source, spec["dest"])
    for spec in TRANSITIONS
    for source in (
        [s.value for s in non_terminal_states()] if spec["source"] == "*" else [spec["source"]]
    )
}


class LifecycleProperties(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # One job: a rank other than 0 joins the directory its rank 0 made (by hand).
        os.environ["SLURM_JOB_ID"] = "77"
        self.workdir = Path(tempfile.mkdtemp(prefix="fsm-props-"))
        self.calls = Calls()
        self.baseline = process_fingerprint()
        self.terminal_state: S | None = None
        self.orch: RootOrchestrator

    @initialize(rank=st.sampled_from([0, 0, 1]))
    def create(self, rank: int) -> None:
        cfg = Config.from_dict(minimal_recipe(self.workdir))
        self.orch = RootOrchestrator(
            cfg, **fake_dependencies(self.calls), rank=rank, local_rank=rank
        )
        if rank != 0:
            pretend_rank_zero_is_ready(cfg, self.orch.launch)

    def _drive(self, action: Any) -> None:
        was_terminal = self.orch.machine.is_terminal
        try:
            action()
        except LifecycleError:
            assert was_terminal, "LifecycleError is only for driving a finished run"
        except StepFailure:
            assert self.orch.state is S.FAILED
        except KeyboardInterrupt:
            # in a step: rolled back to FAILED; inside cleanup's undos: re-raised
            # after the run reached CLEANED
            assert self.orch.state in TERMINAL_STATES
        except Exception as exc:  # wrapped lock/device failures
            # StepFailure itself was handled above, so anything here must wrap a cause.
            assert exc.__cause__ is not None, f"unwrapped {type(exc).__name__}: {exc}"
            assert self.orch.state is S.FAILED

    @rule(call=st.sampled_from(FAKE_CALLS), interrupt=st.booleans())
    def arm_failure(self, call: str, interrupt: bool) -> None:
        self.calls.fail[call] = KeyboardInterrupt() if interrupt else StepFailure(call)

    @rule()
    def advance(self) -> None:
        self._drive(self.orch.machine.advance)

    @rule(target_index=st.integers(min_value=0, max_value=9))
    def run_until(self, target_index: int) -> None:
        path = advance_path(self.orch.is_main_process)
        target = path[min(target_index, len(path) - 1)]
        self._drive(lambda: self.orch.machine.run_until(target))

    @rule()
    def initialize_core_services(self) -> None:
        self._drive(self.orch.initialize_core_services)

    @rule()
    def log_environment_report(self) -> None:
        self._drive(self.orch.log_environment_report)

    @rule()
    def cleanup(self) -> None:
        self._drive(self.orch.cleanup)

    @precondition(lambda self: hasattr(self, "orch"))
    @invariant()
    def lock_is_held_exactly_in_the_guarded_states(self) -> None:
        held = self.orch.infra.held  # type: ignore[attr-defined]
        assert held == (self.orch.state in LOCK_HELD_STATES and self.orch.is_main_process)

    @precondition(lambda self: hasattr(self, "orch"))
    @invariant()
    def terminal_states_are_absorbing(self) -> None:
        if self.terminal_state is not None:
            assert self.orch.state is self.terminal_state
        elif self.orch.state in TERMINAL_STATES:
            self.terminal_state = self.orch.state

    @precondition(lambda self: hasattr(self, "orch") and self.orch.machine.is_terminal)
    @invariant()
    def nothing_of_the_run_is_left_in_the_process(self) -> None:
        assert logging.getLogger("orchestrator_fsm").handlers == self.baseline["handlers"][0]
        assert process_fingerprint() == self.baseline

    @precondition(lambda self: hasattr(self, "orch"))
    @invariant()
    def history_is_a_path_of_the_table(self) -> None:
        state = S.CREATED
        for record in self.orch.machine.history:
            assert record.source is state
            assert (record.trigger, record.source.value, record.dest.value) in ALLOWED
            if record.ok or record.step in MACHINE_STEPS:
                state = record.dest
        assert state is self.orch.state

    def teardown(self) -> None:
        if hasattr(self, "orch"):
            self.calls.fail.clear()
            self.orch.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)


LifecycleProperties.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_lifecycle_properties = LifecycleProperties.TestCase
