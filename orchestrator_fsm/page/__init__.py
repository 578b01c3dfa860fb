"""``orchestrator-fsm report``: one self-contained HTML page of a run (or several).

Imported only by that command: it needs Jinja2 (the ``report`` extra), which neither
``import orchestrator_fsm`` nor the other commands import. Charts are inline SVG drawn
here (:mod:`.svg`); the lifecycle diagram is the one :mod:`orchestrator_fsm.diagrams`
generates from the transition table, with the run's path drawn on it (:mod:`.diagram`).
"""

from __future__ import annotations

from orchestrator_fsm.page.build import (
    PageTarget,
    find_runs,
    render_comparison_page,
    render_run_page,
    write_pages,
)

__all__ = ["PageTarget", "find_runs", "render_comparison_page", "render_run_page", "write_pages"]
