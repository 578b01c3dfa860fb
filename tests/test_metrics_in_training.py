"""A training loop as people write it: tensors logged as they come, a loss that diverges,
a value that is not a number. Training goes on; every reader shows what was logged."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli, minimal_recipe

TRAIN = """
import torch


def main(orch):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e3)  # far too high: it diverges
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    for step in range(40):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        orch.log_metrics(
            {
                "loss": loss.detach(),
                "lr": optimizer.param_groups[0]["lr"],
                "weights": model.weight.detach(),
                "note": "diverging",
            },
            step=step,
        )
    orch.log_summary({"final_loss": loss.detach()})
    print("TRAINING REACHED ITS END")
"""


def strict_json(text: str) -> Any:
    def refuse(token: str) -> Any:
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_a_diverging_loop_logging_tensors_trains_to_its_end_and_every_reader_shows_nan(
    tmp_path: Path, existing_mlflow_store: Callable[[Path], Path]
) -> None:
    pytest.importorskip("torch")
    existing_mlflow_store(tmp_path / "outputs")
    pytest.importorskip("tensorboard")
    (tmp_path / "train.py").write_text(TRAIN, encoding="utf-8")
    recipe = minimal_recipe(tmp_path, telemetry={"observers": ["mlflow", "tensorboard"]})
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")

    done = cli("run", "recipe.yaml", "--entry", "train.py:main", cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "TRAINING REACHED ITS END" in done.stdout
    [run_dir] = [path for path in (tmp_path / "outputs").iterdir() if (path / "run.json").exists()]
    lines = [strict_json(text) for text in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if line["kind"] == "metrics"]
    assert len(losses) == 40
    assert isinstance(losses[0], float)
    assert "NaN" in losses  # recorded as it was, past the point it diverged
    assert lines[-1]["final_loss"] == "NaN"
    assert all("weights" not in line and "note" not in line for line in lines)
    warnings = [
        line
        for line in (run_dir / "logs" / "run.log").read_text().splitlines()
        if "not recorded" in line
    ]
    assert len(warnings) == 2, warnings
    assert "metric 'weights': expected a number, got Tensor" in warnings[0]
    assert "metric 'note': expected a number, got str 'diverging'" in warnings[1]

    shown = cli("inspect", str(run_dir), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "loss=nan (step 39)" in shown.stdout
    assert "final_loss=nan" in shown.stdout
    listed = cli("runs", str(tmp_path / "outputs"), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [row] = strict_json(listed.stdout)
    assert row["metrics"]["loss"] == "NaN" and row["summary"] == {"final_loss": "NaN"}
    table = cli("runs", str(tmp_path / "outputs"), cwd=tmp_path)
    assert "final_loss=nan" in table.stdout
    same = cli("diff", str(run_dir), str(run_dir), "--json", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    compared = strict_json(same.stdout)
    assert compared["metrics"]["status"] == "identical"
    assert compared["final"] == {}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    [mlflow_run] = client.search_runs(
        [client.get_experiment_by_name("orchestrator-fsm").experiment_id]
    )
    history = [m.value for m in client.get_metric_history(mlflow_run.info.run_id, "loss")]
    assert len(history) == 40 and math.isnan(history[-1])
    assert "weights" not in mlflow_run.data.metrics

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = [event.value for event in events.Scalars("loss")]
    assert len(scalars) == 40 and math.isnan(scalars[-1])
