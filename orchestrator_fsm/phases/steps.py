"""Which phase function performs each step the transition table names.

The order of the steps is the table's (``lifecycle/table.py``); this map only says
where each step's code lives. ``LifecycleMachine`` refuses a map that misses a step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from orchestrator_fsm.lifecycle.machine import Undo
from orchestrator_fsm.phases import (
    determinism,
    device,
    filesystem,
    joining,
    lock,
    logging,
    manifest,
    report,
    runtime,
)
from orchestrator_fsm.phases.context import RunContext

__all__ = ["STEPS", "PhaseStep"]

PhaseStep = Callable[[RunContext], "Undo | None"]

STEPS: Final[Mapping[str, PhaseStep]] = {
    "seed": determinism.step,
    "configure_runtime": runtime.step,
    "provision": filesystem.step,
    "join": joining.step,
    "init_logging": logging.step,
    "persist_manifest": manifest.step,
    "acquire_lock": lock.step,
    "resolve_device": device.step,
    "report": report.step,
}
