"""The MLflow observer against a real SQLite store, read back with MlflowClient."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator_fsm import RunInterrupted
from orchestrator_fsm.mlflow_observer import flat_params
from orchestrator_fsm.orchestrator import RootOrchestrator

ConfigFactory = Callable[..., Any]


def test_importing_the_package_never_imports_mlflow() -> None:
    code = (
        "import sys, orchestrator_fsm, orchestrator_fsm.mlflow_observer, orchestrator_fsm.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


def test_params_are_flattened_and_cut_to_mlflow_limits() -> None:
    params = dict(flat_params({"a": {"b": 1, "c": {"d": "x" * 7000}}, "e": {}}))
    assert params == {"a.b": "1", "a.c.d": "x" * 6000, "e": "{}"}


def run_with_mlflow(cfg: Any, ending: BaseException | None) -> Path:
    orch = RootOrchestrator(cfg, rank=0, local_rank=0)
    try:
        with orch:
            orch.log_metrics({"loss": 0.5}, step=1)
            orch.log_metrics({"loss": 0.25}, step=2)
            orch.log_summary({"final_acc": 0.9})
            if ending is not None:
                raise ending
    except BaseException as exc:
        if exc is not ending:
            raise
    assert orch.paths is not None
    return orch.paths.root


@pytest.mark.parametrize(
    ("ending", "status", "mlflow_status"),
    [
        (None, "completed", "FINISHED"),
        (RuntimeError("diverged"), "failed", "FAILED"),
        (RunInterrupted(15), "interrupted", "KILLED"),
    ],
)
def test_a_run_is_one_mlflow_run_with_params_metrics_artifacts_and_its_status(
    make_config: ConfigFactory,
    tmp_path: Path,
    ending: BaseException | None,
    status: str,
    mlflow_status: str,
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cfg = make_config(
        telemetry={"observers": ["mlflow"]},
        training={"seed": 7, "api_token": "hunter2"},
    )
    root = run_with_mlflow(cfg, ending)
    from orchestrator_fsm import read_run

    assert read_run(root).status == status
    uri = f"sqlite:///{Path(cfg.telemetry.output_dir).resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.hardware.project_name)
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == root.name
    assert run.info.status == mlflow_status
    assert run.data.params["training.seed"] == "7"
    assert run.data.params["training.api_token"] != "hunter2"
    assert run.data.metrics == {"loss": 0.25, "final_acc": 0.9}
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    folders = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"reports", "logs"} <= folders
    reports = {item.path for item in client.list_artifacts(run.info.run_id, "reports")}
    assert "reports/config.yaml" in reports
