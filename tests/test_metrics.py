"""Metrics and summary: one JSON line per call in the run directory, the last values
and the summary in run.json at the end."""

from __future__ import annotations

import json
import math
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


def test_the_values_compare_reads_from_a_line_are_the_values_the_recorder_wrote(
    make_config: ConfigFactory,
) -> None:
    from orchestrator_fsm.lifecycle.metrics import line_values

    with RootOrchestrator(make_config(), rank=0, local_rank=0) as orch:
        orch.log_metrics({"loss": 0.25, "acc": 1}, step=3)
        orch.log_summary({"final_acc": 0.5})
        assert orch.paths is not None
        root = orch.paths.root
    lines = metric_lines(root)
    assert [line_values(line) for line in lines] == [{"loss": 0.25, "acc": 1}, {"final_acc": 0.5}]


def warnings_in_log(root: Path) -> list[str]:
    return [
        line for line in (root / "logs" / "run.log").read_text().splitlines() if "WARNING" in line
    ]


def strict_json(text: str) -> Any:
    """``text`` read as JSON proper: Python's NaN/Infinity extension is refused."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_tensors_and_numpy_numbers_are_recorded_as_numbers(make_config: ConfigFactory) -> None:
    torch = pytest.importorskip("torch")
    with RootOrchestrator(make_config(), rank=0, local_rank=0) as orch:
        loss = torch.tensor(0.5, requires_grad=True) * 1.0
        orch.log_metrics(
            {
                "loss": loss,  # 0-d, still attached to the graph
                "acc": torch.tensor([0.25]),  # one element
                "lr": np.float32(0.125),
                "seen": np.int64(640),
                "grad_norm": np.array(2.0),
                "half": torch.tensor(1.5, dtype=torch.float16),
                "count": torch.tensor(3),
            },
            step=torch.tensor(4),
        )
        orch.log_summary({"best": np.float64(0.75)})
        assert orch.paths is not None
        root = orch.paths.root
    [line, summary] = metric_lines(root)
    assert {key: line[key] for key in line if key not in ("time", "rank", "kind", "attempt")} == {
        "step": 4,
        "loss": 0.5,
        "acc": 0.25,
        "lr": 0.125,
        "seen": 640,
        "grad_norm": 2.0,
        "half": 1.5,
        "count": 3,
    }
    assert summary["best"] == 0.75
    assert read_run(root).metrics["loss"].step == 4


def test_nan_and_infinities_are_recorded_as_they_are_in_strict_json(
    make_config: ConfigFactory,
) -> None:
    with RootOrchestrator(make_config(), rank=0, local_rank=0) as orch:
        orch.log_metrics({"loss": float("nan"), "up": float("inf"), "down": -np.inf}, step=1)
        orch.log_summary({"final_loss": float("nan")})
        assert orch.paths is not None
        root = orch.paths.root
    lines = [strict_json(text) for text in (root / METRICS_FILE).read_text().splitlines()]
    assert (lines[0]["loss"], lines[0]["up"], lines[0]["down"]) == ("NaN", "Infinity", "-Infinity")
    assert lines[1]["final_loss"] == "NaN"
    data = strict_json((root / RUN_FILE).read_text())
    assert data["metrics"]["loss"] == {"last": "NaN", "step": 1}
    assert data["summary"] == {"final_loss": "NaN"}
    record = read_run(root)
    assert math.isnan(record.metrics["loss"].last)
    assert (record.metrics["up"].last, record.metrics["down"].last) == (math.inf, -math.inf)
    assert math.isnan(record.summary["final_loss"])
    from orchestrator_fsm.lifecycle.metrics import line_values

    assert line_values(lines[0])["up"] == math.inf


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"flag": True}, "'flag'"),
        ({"text": "0.3"}, "'text'"),
        ({"vector": np.array([1.0, 2.0])}, "'vector'"),
        ({"nested": {"a": 1.0}}, "'nested'"),
        ({3: 0.1}, "3"),
        ({"step": 1.0}, "'step'"),
        ({"": 1.0}, "''"),
    ],
)
def test_a_bad_name_or_value_is_one_warning_per_name_and_the_rest_is_recorded(
    make_config: ConfigFactory, values: dict[Any, Any], named: str
) -> None:
    with RootOrchestrator(make_config(), rank=0, local_rank=0) as orch:
        for step in range(3):
            orch.log_metrics({**values, "loss": 0.5}, step=step)
            orch.log_summary(values)
        assert orch.paths is not None
        root = orch.paths.root
    [warning] = warnings_in_log(root)
    assert f"metric {named}" in warning or f"got {named}" in warning
    assert "not recorded" in warning
    lines = metric_lines(root)
    assert [line["step"] for line in lines] == [0, 1, 2]  # the empty summaries wrote nothing
    assert all(line["loss"] == 0.5 for line in lines)


def test_a_bad_step_is_one_warning_and_the_values_are_kept_without_it(
    make_config: ConfigFactory,
) -> None:
    with RootOrchestrator(make_config(), rank=0, local_rank=0) as orch:
        for step in (-1, True, 1.5):
            orch.log_metrics({"loss": 0.1}, step=step)
        assert orch.paths is not None
        root = orch.paths.root
    assert [line["step"] for line in metric_lines(root)] == [None, None, None]
    [warning] = warnings_in_log(root)
    assert "step must be an integer >= 0 or None, got -1" in warning


def test_not_a_mapping_is_one_warning(make_config: ConfigFactory) -> None:
    with RootOrchestrator(make_config(), rank=0, local_rank=0) as orch:
        orch.log_metrics(0.5)  # type: ignore[arg-type]
        orch.log_metrics({})
        assert orch.paths is not None
        root = orch.paths.root
    assert not (root / METRICS_FILE).exists()
    [warning] = warnings_in_log(root)
    assert "expected a non-empty mapping of names to numbers, got 0.5" in warning
