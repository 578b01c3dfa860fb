"""State diagrams drawn from the transition table, so the picture cannot drift from
the code: Mermaid and Graphviz DOT as text (no system dependency), SVG through
Graphviz's ``dot`` program."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Final

from orchestrator_fsm.errors import GraphvizNotFoundError, OrchestratorError
from orchestrator_fsm.lifecycle.table import (
    ADVANCE,
    CLEANUP,
    CONDITION_LABELS,
    TERMINAL_STATES,
    TRANSITIONS,
    LifecycleState,
    TransitionSpec,
)

__all__ = [
    "EXTENSIONS",
    "FORMATS",
    "MARKS",
    "GraphvizNotFoundError",
    "edge_key",
    "render",
    "render_dot",
    "render_mermaid",
    "render_svg",
]

FORMATS: Final = ("mermaid", "dot", "svg")
#: The format a file name's extension asks for (``diagram --output``).
EXTENSIONS: Final = {".mmd": "mermaid", ".mermaid": "mermaid", ".dot": "dot", ".gv": "dot",
                     ".svg": "svg"}  # fmt: skip

#: Stands for "every non-terminal state" (the table's "*" source) in drawings.
_ANY_LIVE: Final = "any_live"
_ANY_LIVE_LABEL: Final = "any non-terminal state"


#: How a marked state or edge is drawn (``render_dot``'s ``states`` and ``edges``): a
#: run's path on the diagram. Each mark is also the element's SVG ``class``.
MARKS: Final[Mapping[str, str]] = {
    "reached": 'color="#1a7f37", fontcolor="#1a7f37", penwidth=2.5',
    "failed": 'color="#cf222e", fontcolor="#cf222e", penwidth=3.5, style="rounded,filled", '
    'fillcolor="#ffebe9"',
    "interrupted": 'color="#bc4c00", fontcolor="#bc4c00", penwidth=3.5, style="rounded,filled", '
    'fillcolor="#fff1e5"',
    "rolled_back": 'color="#cf222e", fontcolor="#cf222e", penwidth=2.5, style=dashed',
    "unvisited": 'color="#8c959f", fontcolor="#8c959f"',
}


def edge_key(spec: TransitionSpec) -> tuple[str, str, str]:
    """How ``render_dot``'s ``edges`` names the edge of ``spec``: its drawn source
    (``any_live`` for the table's ``*``), destination and step."""
    return _source_id(spec), spec["dest"], spec["step"]


def _edge_label(spec: TransitionSpec) -> str:
    label = spec["label"]
    if "conditions" in spec:
        label += f" [{CONDITION_LABELS[spec['conditions']]}]"
    if "unless" in spec:
        label += f" [not {CONDITION_LABELS[spec['unless']]}]"
    if spec["trigger"] not in (ADVANCE, CLEANUP):
        label = f"{spec['trigger']}: {label}"
    return label


def _source_id(spec: TransitionSpec) -> str:
    return _ANY_LIVE if spec["source"] == "*" else spec["source"]


def render_mermaid() -> str:
    """The lifecycle as a Mermaid ``stateDiagram-v2``."""
    lines = [
        "stateDiagram-v2",
        f'    state "{_ANY_LIVE_LABEL}" as {_ANY_LIVE}',
        f"    [*] --> {LifecycleState.CREATED.value}",
    ]
    for spec in TRANSITIONS:
        label = _edge_label(spec).replace(":", " -")
        lines.append(f"    {_source_id(spec)} --> {spec['dest']}: {label}")
    lines.extend(
        f"    {state.value} --> [*]" for state in LifecycleState if state in TERMINAL_STATES
    )
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _marked(attributes: str, mark: str | None, element_id: str) -> str:
    if mark is None:
        return attributes
    return f'{attributes}, {MARKS[mark]}, class="{mark}", id="{element_id}"'


def render_dot(
    *,
    states: Mapping[str, str] | None = None,
    edges: Mapping[tuple[str, str, str], str] | None = None,
    id_prefix: str = "",
) -> str:
    """The lifecycle as a Graphviz ``digraph``; ``states`` (state value to a mark of
    :data:`MARKS`) and ``edges`` (:func:`edge_key` to a mark) draw a run's path on it,
    each marked element with the SVG id ``<id_prefix>state-<state>`` or
    ``<id_prefix>edge-<source>-<dest>-<step>``."""
    states = states or {}
    edges = edges or {}
    lines = [
        "digraph lifecycle {",
        # Room between neighbours of a rank, edge labels included: their text stays
        # apart even in a fallback font some 20% wider than Helvetica.
        "    rankdir=TB;",
        "    nodesep=0.8;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
        '    start [shape=point, label=""];',
        f'    {_ANY_LIVE} [label={_dot_quote(_ANY_LIVE_LABEL)}, style="rounded,dashed"];',
    ]
    for state in LifecycleState:
        shape = ", peripheries=2" if state in TERMINAL_STATES else ""
        attributes = _marked(
            f"label={_dot_quote(state.value)}{shape}",
            states.get(state.value),
            f"{id_prefix}state-{state.value}",
        )
        lines.append(f"    {state.value} [{attributes}];")
    lines.append(f"    start -> {LifecycleState.CREATED.value};")
    for spec in TRANSITIONS:
        style = ", style=dashed" if spec["source"] == "*" else ""
        key = edge_key(spec)
        attributes = _marked(
            f"label={_dot_quote(_edge_label(spec))}{style}",
            edges.get(key),
            f"{id_prefix}edge-" + "-".join(key),
        )
        lines.append(f"    {_source_id(spec)} -> {spec['dest']} [{attributes}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(
    *, dot_executable: str | None = None, timeout_s: float = 30.0, source: str | None = None
) -> str:
    """The DOT diagram (or ``source``, a DOT text such as a marked :func:`render_dot`)
    rendered to SVG by Graphviz's ``dot``.

    Raises ``GraphvizNotFoundError`` (with how to install it) when ``dot`` is missing.
    """
    exe = dot_executable or shutil.which("dot")
    if exe is None:
        raise GraphvizNotFoundError(
            "SVG output needs Graphviz's 'dot' program, which is not on PATH; install "
            "Graphviz (e.g. 'apt-get install graphviz' or 'brew install graphviz'), or use "
            "--format mermaid / --format dot, which need nothing"
        )
    import subprocess  # only SVG output runs a program

    result = subprocess.run(
        [exe, "-Tsvg"],
        input=render_dot() if source is None else source,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0:
        raise OrchestratorError(
            f"Graphviz 'dot' failed with exit code {result.returncode}: {result.stderr.strip()}"
        )
    return result.stdout


def render(fmt: str) -> str:
    """The diagram in ``fmt``, one of ``FORMATS``."""
    if fmt == "mermaid":
        return render_mermaid()
    if fmt == "dot":
        return render_dot()
    if fmt == "svg":
        return render_svg()
    raise ValueError(f"diagram format must be one of {', '.join(FORMATS)}; got {fmt!r}")
