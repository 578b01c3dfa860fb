"""Diagrams come from the transition table and the checked-in copies match it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator_fsm.diagrams import (
    GraphvizNotFoundError,
    render,
    render_dot,
    render_mermaid,
    render_svg,
)
from orchestrator_fsm.lifecycle.table import TRANSITIONS, LifecycleState

DIAGRAMS = Path(__file__).resolve().parent.parent / "diagrams"


@pytest.mark.parametrize(("name", "renderer"), [("lifecycle.mmd", render_mermaid),
                                                ("lifecycle.dot", render_dot)])  # fmt: skip
def test_checked_in_diagram_matches_the_table(name: str, renderer: Callable[[], str]) -> None:
    on_disk = (DIAGRAMS / name).read_text(encoding="utf-8")
    assert on_disk == renderer(), f"diagrams/{name} is stale: run `make diagrams`"


def test_readme_embeds_the_current_mermaid_diagram() -> None:
    readme = (DIAGRAMS.parent / "README.md").read_text(encoding="utf-8")
    assert "```mermaid\n" + render_mermaid() + "```" in readme


@pytest.mark.parametrize("renderer", [render_mermaid, render_dot])
def test_every_state_and_transition_is_drawn(renderer: Callable[[], str]) -> None:
    text = renderer()
    for state in LifecycleState:
        assert state.value in text
    for spec in TRANSITIONS:
        assert spec["label"] in text


def test_conditions_of_the_table_appear_on_their_edges() -> None:
    mermaid = render_mermaid()
    assert "configured --> provisioned: 3 create the run directory [rank 0]" in mermaid
    assert (
        "configured --> provisioned: 3 join rank 0's run directory [in rank 0's job] "
        "[not rank 0]" in mermaid
    )
    assert (
        "configured --> ready: resolve the device (no run directory) [not in rank 0's job]"
        in mermaid
    )
    assert "logged --> persisted: 5 persist config, requirements, git [rank 0]" in mermaid


def test_svg_without_graphviz_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(GraphvizNotFoundError, match="install Graphviz"):
        render_svg()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_svg_is_rendered_by_graphviz() -> None:
    svg = render("svg")
    assert svg.lstrip().startswith("<?xml") or "<svg" in svg
    assert "provisioned" in svg


def test_unknown_format_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="mermaid, dot, svg"):
        render("png")
