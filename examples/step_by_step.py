"""Step by step: drive the lifecycle one transition at a time with ``machine.advance()``.

    python examples/step_by_step.py [--output-dir DIR] [--set KEY=VALUE ...]

The with-block does the same thing in one go; driving the machine by hand shows each
state, the step that led to it and how long that step took. Outputs go to a new
temporary directory unless ``--output-dir`` is given.
"""

from __future__ import annotations

from quickstart import load_config  # the examples share one command line

from orchestrator_fsm import LifecycleState, OrchestratorError, RootOrchestrator


def main(argv: list[str] | None = None) -> int:
    orch = RootOrchestrator(load_config(argv, __doc__))
    machine = orch.machine
    print(f"start: {machine.state.value}")
    # The first step starts the run's timer and cleanup stops it, as the with-block does.
    try:
        while not machine.is_terminal:
            state = machine.advance()
            record = machine.history[-1]
            print(
                f"{record.source.value:>11} -> {state.value:<11} "
                f"step {record.step:<17} {record.duration_s * 1000:8.1f} ms"
            )
            if state is LifecycleState.READY and orch.paths is not None:
                print(f"{'':>11}    ready: device {orch.get_device()}, run in {orch.paths.root}")
    except OrchestratorError as exc:
        # The machine has rolled back every step that had completed and sits in FAILED.
        print(f"failed in state {machine.state.value}: {exc}")
        return 1
    finally:
        orch.cleanup()  # a no-op here, but it ends the run if the loop stopped early
    print(f"terminal: {machine.state.value} after {len(machine.history)} transitions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
