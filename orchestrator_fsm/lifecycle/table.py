"""The lifecycle as data.

``TRANSITIONS`` is the single description of the run's lifecycle. The
``transitions`` machine is built from it, the diagrams are drawn from it and the
tests walk it; nothing else in the package encodes the order of the phases.

Each entry is a ``transitions``-style dict (``trigger``, ``source``, ``dest`` and,
optionally, ``conditions`` / ``unless`` naming a predicate) plus two keys of ours:
``step``, the name of the work done while moving, and ``label``, a short text for
people. ``source`` may be ``"*"``: every non-terminal state.
"""

from __future__ import annotations

import enum
from typing import Final, TypedDict

__all__ = [
    "ADVANCE",
    "CLEANUP",
    "CONDITION_LABELS",
    "FAIL",
    "LOCK_HELD_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "LifecycleState",
    "TransitionSpec",
    "advance_path",
    "non_terminal_states",
]


class LifecycleState(str, enum.Enum):
    """Where a run is in its lifecycle. Values are the lower-case names."""

    CREATED = "created"
    SEEDED = "seeded"
    CONFIGURED = "configured"
    PROVISIONED = "provisioned"
    LOGGED = "logged"
    PERSISTED = "persisted"
    GUARDED = "guarded"
    READY = "ready"
    REPORTED = "reported"
    CLEANED = "cleaned"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class _SpecRequired(TypedDict):
    trigger: str
    source: str
    dest: str
    step: str
    label: str


class TransitionSpec(_SpecRequired, total=False):
    conditions: str
    unless: str


ADVANCE: Final = "advance"
CLEANUP: Final = "cleanup"
FAIL: Final = "fail"

S = LifecycleState

TRANSITIONS: Final[tuple[TransitionSpec, ...]] = (
    {"trigger": ADVANCE, "source": S.CREATED.value, "dest": S.SEEDED.value,
     "step": "seed", "label": "1 seed every RNG"},
    {"trigger": ADVANCE, "source": S.SEEDED.value, "dest": S.CONFIGURED.value,
     "step": "configure_runtime", "label": "2 CPU threads and system libraries"},
    {"trigger": ADVANCE, "source": S.CONFIGURED.value, "dest": S.PROVISIONED.value,
     "step": "provision", "label": "3 create the run directory",
     "conditions": "is_main_process"},
    {"trigger": ADVANCE, "source": S.CONFIGURED.value, "dest": S.READY.value,
     "step": "resolve_device", "label": "resolve the device only",
     "unless": "is_main_process"},
    {"trigger": ADVANCE, "source": S.PROVISIONED.value, "dest": S.LOGGED.value,
     "step": "init_logging", "label": "4 start the run log"},
    {"trigger": ADVANCE, "source": S.LOGGED.value, "dest": S.PERSISTED.value,
     "step": "persist_manifest", "label": "5 persist config, requirements, git"},
    {"trigger": ADVANCE, "source": S.PERSISTED.value, "dest": S.GUARDED.value,
     "step": "acquire_lock", "label": "6 take the run lock"},
    {"trigger": ADVANCE, "source": S.GUARDED.value, "dest": S.READY.value,
     "step": "resolve_device", "label": "resolve the device"},
    {"trigger": ADVANCE, "source": S.READY.value, "dest": S.REPORTED.value,
     "step": "report", "label": "7 environment report"},
    {"trigger": ADVANCE, "source": S.REPORTED.value, "dest": S.CLEANED.value,
     "step": "cleanup", "label": "cleanup"},
    {"trigger": CLEANUP, "source": "*", "dest": S.CLEANED.value,
     "step": "cleanup", "label": "cleanup()"},
    {"trigger": FAIL, "source": "*", "dest": S.FAILED.value,
     "step": "rollback", "label": "a step raised, roll back"},
)  # fmt: skip

#: How each predicate named in the table reads in a diagram.
CONDITION_LABELS: Final[dict[str, str]] = {"is_main_process": "rank 0"}

TERMINAL_STATES: Final = frozenset({S.CLEANED, S.FAILED})

#: The states in which the run lock is held (between acquiring and cleanup).
LOCK_HELD_STATES: Final = frozenset({S.GUARDED, S.READY, S.REPORTED})


def non_terminal_states() -> tuple[LifecycleState, ...]:
    """Every state a run can leave, in declaration order."""
    return tuple(state for state in LifecycleState if state not in TERMINAL_STATES)


def advance_path(is_main_process: bool) -> tuple[LifecycleState, ...]:
    """The states one rank visits when only ``advance`` is triggered, start to end."""
    path = [S.CREATED]
    while True:
        current = path[-1].value
        for spec in TRANSITIONS:
            if spec["trigger"] != ADVANCE or spec["source"] != current:
                continue
            if "conditions" in spec and not is_main_process:
                continue
            if "unless" in spec and is_main_process:
                continue
            path.append(LifecycleState(spec["dest"]))
            break
        else:
            return tuple(path)
