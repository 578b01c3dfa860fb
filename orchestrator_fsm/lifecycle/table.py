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
    "CLEANUP_STEP",
    "CONDITION_LABELS",
    "FAIL",
    "IN_RANK_0S_JOB",
    "JOIN_STEP",
    "LOCK_HELD_STATES",
    "LOCK_STEP",
    "MACHINE_STEPS",
    "ROLLBACK_STEP",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "LifecycleState",
    "TransitionSpec",
    "advance_path",
    "condition_facts",
    "non_terminal_states",
    "table_steps",
    "takes_transition",
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

#: The two steps the machine performs itself by unwinding its undo stack: on cleanup
#: (a caller may add a hook that runs first) and on rollback after a step raised.
CLEANUP_STEP: Final = "cleanup"
ROLLBACK_STEP: Final = "rollback"
MACHINE_STEPS: Final = frozenset({CLEANUP_STEP, ROLLBACK_STEP})

#: The step that takes the run lock; cleanup releases it.
LOCK_STEP: Final = "acquire_lock"

#: The step by which a rank other than 0 finds the run directory rank 0 made.
JOIN_STEP: Final = "join"

#: The predicate "this process is rank 0, or shares a job with a rank 0" (a launcher's
#: job id, a rendezvous endpoint or a process group). A rank above 0 for which it is
#: false takes the reference's shortcut: no run directory, device resolution only.
IN_RANK_0S_JOB: Final = "in_rank_0s_job"

S = LifecycleState

TRANSITIONS: Final[tuple[TransitionSpec, ...]] = (
    {"trigger": ADVANCE, "source": S.CREATED.value, "dest": S.SEEDED.value,
     "step": "seed", "label": "1 seed every RNG"},
    {"trigger": ADVANCE, "source": S.SEEDED.value, "dest": S.CONFIGURED.value,
     "step": "configure_runtime", "label": "2 CPU threads and system libraries"},
    {"trigger": ADVANCE, "source": S.CONFIGURED.value, "dest": S.PROVISIONED.value,
     "step": "provision", "label": "3 create the run directory",
     "conditions": "is_main_process"},
    {"trigger": ADVANCE, "source": S.CONFIGURED.value, "dest": S.PROVISIONED.value,
     "step": JOIN_STEP, "label": "3 join rank 0's run directory",
     "conditions": IN_RANK_0S_JOB, "unless": "is_main_process"},
    {"trigger": ADVANCE, "source": S.CONFIGURED.value, "dest": S.READY.value,
     "step": "resolve_device", "label": "resolve the device (no run directory)",
     "unless": IN_RANK_0S_JOB},
    {"trigger": ADVANCE, "source": S.PROVISIONED.value, "dest": S.LOGGED.value,
     "step": "init_logging", "label": "4 start the run log"},
    {"trigger": ADVANCE, "source": S.LOGGED.value, "dest": S.PERSISTED.value,
     "step": "persist_manifest", "label": "5 persist config, requirements, git",
     "conditions": "is_main_process"},
    {"trigger": ADVANCE, "source": S.LOGGED.value, "dest": S.READY.value,
     "step": "resolve_device", "label": "resolve the device",
     "unless": "is_main_process"},
    {"trigger": ADVANCE, "source": S.PERSISTED.value, "dest": S.GUARDED.value,
     "step": LOCK_STEP, "label": "6 take the run lock"},
    {"trigger": ADVANCE, "source": S.GUARDED.value, "dest": S.READY.value,
     "step": "resolve_device", "label": "resolve the device"},
    {"trigger": ADVANCE, "source": S.READY.value, "dest": S.REPORTED.value,
     "step": "report", "label": "7 environment report"},
    {"trigger": ADVANCE, "source": S.REPORTED.value, "dest": S.CLEANED.value,
     "step": CLEANUP_STEP, "label": "cleanup"},
    {"trigger": CLEANUP, "source": "*", "dest": S.CLEANED.value,
     "step": CLEANUP_STEP, "label": "cleanup()"},
    {"trigger": FAIL, "source": "*", "dest": S.FAILED.value,
     "step": ROLLBACK_STEP, "label": "a step raised, roll back"},
)  # fmt: skip

#: Every predicate the table names, with how it reads in a diagram. A machine must be
#: given a truth value for each of them (see ``LifecycleMachine``).
CONDITION_LABELS: Final[dict[str, str]] = {
    "is_main_process": "rank 0",
    IN_RANK_0S_JOB: "in rank 0's job",
}

TERMINAL_STATES: Final = frozenset({S.CLEANED, S.FAILED})


def non_terminal_states() -> tuple[LifecycleState, ...]:
    """Every state a run can leave, in declaration order."""
    return tuple(state for state in LifecycleState if state not in TERMINAL_STATES)


def table_steps() -> tuple[str, ...]:
    """Every step name of the table that the machine is given a callable for, in order."""
    names: dict[str, None] = {}
    for spec in TRANSITIONS:
        if spec["step"] not in MACHINE_STEPS:
            names.setdefault(spec["step"])
    return tuple(names)


def takes_transition(spec: TransitionSpec, facts: dict[str, bool]) -> bool:
    """Whether ``spec``'s condition holds given the truth value of each predicate."""
    if "conditions" in spec and not facts[spec["conditions"]]:
        return False
    return not ("unless" in spec and facts[spec["unless"]])


def condition_facts(is_main_process: bool, in_rank_0s_job: bool = True) -> dict[str, bool]:
    """The truth value of each predicate the table names, for one process. Rank 0 is in
    its own job whatever ``in_rank_0s_job`` says."""
    return {"is_main_process": is_main_process, IN_RANK_0S_JOB: is_main_process or in_rank_0s_job}


def advance_path(is_main_process: bool, in_rank_0s_job: bool = True) -> tuple[LifecycleState, ...]:
    """The states one rank visits when only ``advance`` is triggered, start to end
    (``in_rank_0s_job``: see :data:`IN_RANK_0S_JOB`)."""
    facts = condition_facts(is_main_process, in_rank_0s_job)
    path = [S.CREATED]
    while True:
        current = path[-1].value
        for spec in TRANSITIONS:
            on_path = spec["trigger"] == ADVANCE and spec["source"] == current
            if on_path and takes_transition(spec, facts):
                path.append(LifecycleState(spec["dest"]))
                break
        else:
            return tuple(path)


def _lock_held_states() -> frozenset[LifecycleState]:
    # From the state the lock step reaches up to cleanup, on rank 0's path.
    path = advance_path(is_main_process=True)
    guarded = next(
        LifecycleState(spec["dest"]) for spec in TRANSITIONS if spec["step"] == LOCK_STEP
    )
    return frozenset(path[path.index(guarded) : path.index(S.CLEANED)])


#: The states in which the run lock is held (between taking it and cleanup).
LOCK_HELD_STATES: Final = _lock_held_states()
