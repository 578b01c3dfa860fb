"""Redaction of every file a run writes: a URL password or secret in the config, in the
command line, in the pipeline's own log lines, prints, warnings and error, reaches none."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from conftest import cli, minimal_recipe

TRAIN = """
import logging
import sys
import warnings


def main(orch):
    orch.log_environment_report()
    orch.log_metrics({"loss": 0.5}, step=1)
    orch.log_summary({"acc": 0.75})
    name = orch.cfg.dataset.name
    orch.run_logger.info("connecting to %s", name)
    logging.getLogger("user.code").warning("mirror %s", orch.cfg.dataset["mirror"])
    print("dataset:", name)
    print(f"token in a URL: https://x:{orch.cfg.training['api_token']}@h/p", file=sys.stderr)
    warnings.warn(f"slow mirror {orch.cfg.dataset['mirror']}")
    orch.checkpoints().save(step=1, extra={"note": "kept"})
    raise ConnectionError(f"cannot reach {name}")
"""


def files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    )


@pytest.mark.slow
def test_no_file_of_the_run_holds_a_secret_of_its_config(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    (tmp_path / "train.py").write_text(TRAIN, encoding="utf-8")
    recipe = minimal_recipe(
        tmp_path,
        dataset={
            "name": "postgres://u:secret@host/db",
            "mirror": "https://me:secret@example.com/data",
        },
        training={"db_password": "secret-db"},
        telemetry={"capture_stdout": True, "observers": ["mlflow", "tensorboard"]},
    )
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")

    done = cli(
        "run",
        "recipe.yaml",
        "--entry",
        "train.py:main",
        "--set",
        "training.api_token=secret-token",
        "dataset.backup=s3://key:secret@bucket/x",
        cwd=tmp_path,
    )

    assert done.returncode == 1, done.stderr
    assert "ConnectionError: cannot reach" in done.stderr
    [run_dir] = [path for path in (tmp_path / "outputs").iterdir() if (path / "run.json").exists()]
    written = files_holding(run_dir, b"")
    for expected in (
        "logs/run.log",
        "logs/stdout.log",
        "reports/environment.json",
        "reports/rerun.json",
        "reports/config.yaml",
        "lifecycle.jsonl",
        "metrics.jsonl",
        "run.json",
    ):
        assert expected in written
    assert any(name.startswith("tensorboard/") for name in written)
    assert any(name.startswith("checkpoints/") for name in written)
    assert files_holding(run_dir, b"secret") == []
    log = (run_dir / "logs" / "run.log").read_text(encoding="utf-8")
    assert "connecting to postgres://u:***@host/db" in log
    assert "mirror https://me:***@example.com/data" in log
    assert "dataset: postgres://u:***@host/db" in (run_dir / "logs" / "stdout.log").read_text()
    # What the MLflow observer sent: params, tags, artifacts.
    artifacts = tmp_path / "outputs" / "mlartifacts"
    assert files_holding(artifacts, b"secret") == []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("orchestrator-fsm")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    sent = [*run.data.params.items(), *run.data.tags.items(), run.info.run_name]
    assert not [item for item in sent if "secret" in str(item)]
    assert run.data.params["dataset.name"] == "postgres://u:***@host/db"
    assert sys.executable  # the run used this interpreter (cli), nothing else to check
