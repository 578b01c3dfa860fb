"""The lifecycle diagram, generated from the transition table
(:mod:`orchestrator_fsm.diagrams`), with one attempt's path drawn on it: the states it
reached and the transitions it took, the step that failed (or was interrupted) and
the rollback that undid the steps before it.

Graphviz's ``dot`` lays it out when it is installed; without it the page draws the
same marks on a plain column of the states (:func:`fallback_svg`).
"""

from __future__ import annotations

import re
import shutil
from html import escape
from typing import Final

from orchestrator_fsm.diagrams import edge_key, render_dot, render_svg
from orchestrator_fsm.errors import OrchestratorError
from orchestrator_fsm.lifecycle.machine import TransitionRecord
from orchestrator_fsm.lifecycle.table import (
    MACHINE_STEPS,
    ROLLBACK_STEP,
    TRANSITIONS,
    LifecycleState,
    TransitionSpec,
)
from orchestrator_fsm.page.data import AttemptView

__all__ = ["attempt_marks", "fallback_svg", "interrupted", "path_svg"]

#: The error types of a step a signal (or Ctrl-C) stopped rather than a failure.
_INTERRUPTS: Final = ("KeyboardInterrupt", "RunInterrupted")

_GRAPHVIZ_ID: Final = re.compile(r'id="((?:graph|node|edge|clust|a_)\w*?\d+)"')

Marks = tuple[dict[str, str], dict[tuple[str, str, str], str]]


def interrupted(error: str | None) -> bool:
    """Whether a transition's ``error`` says a signal stopped its step."""
    return (error or "").partition(":")[0] in _INTERRUPTS


def _spec_of(transition: TransitionRecord) -> TransitionSpec | None:
    """The table entry ``transition`` took: its own source first, else the ``*`` one."""
    for source in (transition.source.value, "*"):
        for spec in TRANSITIONS:
            if (spec["source"], spec["dest"], spec["step"]) == (
                source,
                transition.dest.value,
                transition.step,
            ):
                return spec
    return None


def attempt_marks(attempt: AttemptView) -> Marks:
    """The marks of ``attempt``'s path: states to a mark, :func:`edge_key` to a mark.
    When the caller's own work (the pipeline) raised, the state it ran in is marked."""
    states: dict[str, str] = {}
    edges: dict[tuple[str, str, str], str] = {}
    if attempt.transitions:
        states[LifecycleState.CREATED.value] = "reached"
    bad = "interrupted" if attempt.status not in ("failed", "crashed") else "failed"
    for transition in attempt.transitions:
        spec = _spec_of(transition)
        if transition.ok:
            states.setdefault(transition.dest.value, "reached")
            if spec is not None:
                edges[edge_key(spec)] = (
                    "rolled_back" if transition.step == ROLLBACK_STEP else "reached"
                )
            if transition.step == ROLLBACK_STEP:
                states[transition.dest.value] = bad
                states.setdefault(transition.source.value, bad)
            continue
        mark = "interrupted" if interrupted(transition.error) else "failed"
        if transition.step not in MACHINE_STEPS and spec is not None:
            edges[edge_key(spec)] = mark
        states[transition.source.value] = mark
    if attempt.pipeline_failed:
        # The caller's own work ended the attempt: the state it ended in (the one the
        # cleanup left, READY or REPORTED, whenever the report was asked for) is marked.
        ran_in = attempt.transitions[attempt.spans[-1].until].source.value
        states[ran_in] = bad
    return states, edges


def path_svg(attempt: AttemptView) -> tuple[str, bool]:
    """The diagram with ``attempt``'s path as SVG text, and whether Graphviz drew it.
    Marked elements have ids ``a<attempt>-state-<state>`` (and ``-edge-`` ones with
    Graphviz), unique on a page of several attempts."""
    states, edges = attempt_marks(attempt)
    prefix = f"a{attempt.number}-"
    if shutil.which("dot") is not None:
        try:
            svg = render_svg(source=render_dot(states=states, edges=edges, id_prefix=prefix))
        except (OrchestratorError, OSError):
            pass
        else:
            # The XML prologue and doctype do not belong inside HTML, and Graphviz's own
            # ids (node1, edge1, ...) repeat in each attempt's drawing: made unique.
            svg = svg[max(0, svg.find("<svg")) :]
            return _GRAPHVIZ_ID.sub(rf'id="{prefix}\1"', svg), True
    return fallback_svg(states, prefix), False


_BOX_W: Final = 170
_BOX_H: Final = 30
_GAP: Final = 16


def fallback_svg(states: dict[str, str], id_prefix: str = "") -> str:
    """The states as a column of boxes in lifecycle order (FAILED beside the column),
    marked as :func:`attempt_marks` says; arrows between neighbours."""
    order = [state.value for state in LifecycleState if state is not LifecycleState.FAILED]
    height = len(order) * (_BOX_H + _GAP) + _GAP
    parts = [
        f'<svg class="fallback-diagram" viewBox="0 0 420 {height}" '
        'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="lifecycle states">'
    ]
    for index, name in enumerate(order):
        y = _GAP + index * (_BOX_H + _GAP)
        if index:
            parts.append(f'<line class="arrow" x1="95" x2="95" y1="{y - _GAP}" y2="{y}"/>')
        parts.append(_box(name, 10, y, states.get(name, "unvisited"), id_prefix))
    failed = LifecycleState.FAILED.value
    mark = states.get(failed, "unvisited")
    parts.append(_box(failed, 230, height / 2 - _BOX_H / 2, mark, id_prefix))
    parts.append("</svg>")
    return "".join(parts)


def _box(name: str, x: float, y: float, mark: str, id_prefix: str) -> str:
    return (
        f'<g class="node {mark}" id="{escape(id_prefix)}state-{escape(name)}">'
        f'<rect x="{x}" y="{y}" '
        f'width="{_BOX_W}" height="{_BOX_H}" rx="8"/><text x="{x + _BOX_W / 2}" '
        f'y="{y + _BOX_H / 2}" text-anchor="middle" dominant-baseline="middle">'
        f"{escape(name)}</text></g>"
    )
