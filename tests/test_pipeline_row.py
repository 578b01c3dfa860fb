"""The ``pipeline`` row of the timing table is the caller's own work, however the API was
used: a with-block asking for the report before or after training, or step by step."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator_fsm import RootOrchestrator
from orchestrator_fsm.lifecycle.record import pipeline_spans, read_run
from orchestrator_fsm.lifecycle.table import LifecycleState

WORK_S = 0.3


def _recorded(root: Path) -> tuple[float, float]:
    record = json.loads((root / "run.json").read_text(encoding="utf-8"))
    return record["phases"]["pipeline"], record["elapsed_s"]


@pytest.mark.parametrize("report", ["before", "after"])
def test_the_with_block_times_the_work_whenever_the_report_is_asked_for(
    make_config: Callable[..., Any], report: str
) -> None:
    with RootOrchestrator(make_config()) as orch:
        if report == "before":
            orch.log_environment_report()
        time.sleep(WORK_S)
        if report == "after":
            orch.log_environment_report()
    assert orch.paths is not None
    pipeline, elapsed = _recorded(orch.paths.root)
    assert WORK_S <= pipeline <= elapsed
    (span,) = pipeline_spans(read_run(orch.paths.root).transitions)
    assert span.duration_s == pipeline


def test_step_by_step_as_the_readme_shows_times_the_run_and_the_work(
    make_config: Callable[..., Any],
) -> None:
    orch = RootOrchestrator(make_config())
    while orch.machine.can_advance():
        if orch.machine.advance() is LifecycleState.READY:
            time.sleep(WORK_S)
    assert orch.state is LifecycleState.CLEANED
    assert orch.paths is not None
    pipeline, elapsed = _recorded(orch.paths.root)
    assert WORK_S <= pipeline <= elapsed
