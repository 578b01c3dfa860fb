"""Metrics and summary: one JSON line per call in the run directory, the last values
and the summary in run.json at the end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orchestrator_fsm import LifecycleError, read_run
from orchestrator_fsm.layout import METRICS_FILE, RUN_FILE
from orchestrator_fsm.orchestrator import RootOrchestrator

ConfigFactory = Callable[..., Any]


def metric_lines(root: Path, name: str = METRICS_FILE) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / name).read_text().splitlines()]


def test_each_call_is_one_line_and_run_json_keeps_the_last_values_and_summary(
    make_config: ConfigFactory,
) -> None:
    with RootOrchestrator(make_config(), rank=0, local_rank=0) as orch:
        orch.log_metrics({"loss": 0.5, "acc": 0.8}, step=1)
        orch.log_metrics({"loss": 0.3}, step=2)
        orch.log_metrics({"lr": np.float32(0.5)})
        orch.log_summary({"final_acc": 0.93})
        assert orch.paths is not None
        root = orch.paths.root
        before = json.loads((root / RUN_FILE).read_text())
    lines = metric_lines(root)
    assert [line["kind"] for line in lines] == ["metrics", "metrics", "metrics", "summary"]
    assert lines[0]["loss"] == 0.5 and lines[0]["acc"] == 0.8 and lines[0]["step"] == 1
    assert lines[2] == {**lines[2], "lr": 0.5, "step": None, "rank": 0}
    assert all("time" in line for line in lines)
    assert lines[3]["final_acc"] == 0.93
    assert "loss" not in before.get("metrics", {})  # no run.json rewrite per call
    record = read_run(root)
    assert {name: (m.last, m.step) for name, m in record.metrics.items()} == {
        "loss": (0.3, 2),
        "acc": (0.8, 1),
        "lr": (0.5, None),
    }
    assert record.summary == {"final_acc": 0.93}
    data = json.loads((root / RUN_FILE).read_text())
    assert data["metrics"]["loss"] == {"last": 0.3, "step": 2}
    assert data["summary"] == {"final_acc": 0.93}


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"loss": float("nan")}, "'loss'"),
        ({"ok": 1.0, "acc": float("inf")}, "'acc'"),
        ({"flag": True}, "'flag'"),
        ({"text": "0.3"}, "'text'"),
        ({3: 0.1}, "3"),
        ({"step": 1.0}, "'step'"),
    ],
)
def test_a_bad_value_or_key_is_a_value_error_naming_the_key(
    make_config: ConfigFactory, values: dict[Any, Any], named: str
) -> None:
    with RootOrchestrator(make_config(), rank=0, local_rank=0) as orch:
        with pytest.raises(ValueError, match=named):
            orch.log_metrics(values)
        with pytest.raises(ValueError, match=named):
            orch.log_summary(values)
        assert orch.paths is not None
        assert not (orch.paths.root / METRICS_FILE).exists()


def test_a_bad_step_is_a_value_error(make_config: ConfigFactory) -> None:
    with RootOrchestrator(make_config(), rank=0, local_rank=0) as orch:
        for step in (-1, True, 1.5):
            with pytest.raises(ValueError, match="step"):
                orch.log_metrics({"loss": 0.1}, step=step)  # type: ignore[arg-type]


def test_logging_outside_the_run_is_a_lifecycle_error(make_config: ConfigFactory) -> None:
    orch = RootOrchestrator(make_config(), rank=0, local_rank=0)
    with pytest.raises(LifecycleError, match="no run directory"):
        orch.log_metrics({"loss": 0.1})
    with orch:
        pass
    with pytest.raises(LifecycleError, match="ended"):
        orch.log_summary({"acc": 0.1})


def test_a_failed_run_keeps_the_metrics_logged_before_it_failed(
    make_config: ConfigFactory,
) -> None:
    orch = RootOrchestrator(make_config(), rank=0, local_rank=0)
    with pytest.raises(RuntimeError), orch:
        orch.log_metrics({"loss": 0.7}, step=3)
        raise RuntimeError("diverged")
    assert orch.paths is not None
    record = read_run(orch.paths.root)
    assert record.status == "failed"
    assert record.metrics["loss"].last == 0.7 and record.metrics["loss"].step == 3
