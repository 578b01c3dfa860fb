"""An observer that mirrors each run into MLflow (``pip install orchestrator-fsm[mlflow]``).

Name it in the recipe (``telemetry.observers: [mlflow]``, or ``{mlflow: {tracking_uri:
..., experiment: ...}}``) or pass ``MlflowObserver(cfg)`` in ``observers=``. MLflow is
imported only when a run starts, so ``import orchestrator_fsm`` never imports it. Only
rank 0 talks to MLflow. One MLflow run per run directory: its name is the run id; the
recipe, flattened and redacted, as params (cut to MLflow's length limits); every
``log_metrics`` / ``log_summary`` value as a metric (with its step); at the end the git
commit and branch as ``mlflow.source.git.*`` tags (when known), the run directory's
``reports/`` and ``logs/`` as artifacts, and the status: FINISHED, FAILED or KILLED for
``completed``, ``failed`` or ``interrupted``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from orchestrator_fsm.observers import Observer
from orchestrator_fsm.redaction import redact_secrets

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.lifecycle.record import RunRecord

__all__ = ["MLFLOW_STATUS", "MlflowObserver", "flat_params"]

#: The MLflow run status for each final status of run.json.
MLFLOW_STATUS: Final = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}

_MAX_KEY: Final = 250
_MAX_VALUE: Final = 6000
_BATCH: Final = 100
_GIT_TAGS: Final = {"commit": "mlflow.source.git.commit", "branch": "mlflow.source.git.branch"}


def flat_params(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``("training.seed", "7")`` for every leaf of ``data``, keys and values cut to
    MLflow's limits (250 and 6000 characters)."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from flat_params(value, f"{name}.")
        else:
            yield name[:_MAX_KEY], str(value)[:_MAX_VALUE]


def _git_info(reports: Path) -> dict[str, str]:
    try:
        text = (reports / "git_info.txt").read_text(encoding="utf-8")
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key.strip() in _GIT_TAGS and value and not value.startswith(("none", "(")):
            found[_GIT_TAGS[key.strip()]] = value
    return found


class MlflowObserver(Observer):
    """Mirrors a run into MLflow at ``tracking_uri`` (default ``sqlite:///<output_dir>/
    mlflow.db``, artifacts in ``<output_dir>/mlartifacts``), in ``experiment`` (default
    ``hardware.project_name``)."""

    def __init__(
        self, cfg: Config, *, tracking_uri: str | None = None, experiment: str | None = None
    ) -> None:
        if importlib.util.find_spec("mlflow") is None:
            raise ModuleNotFoundError(
                "mlflow is not installed; pip install 'orchestrator-fsm[mlflow]'"
            )
        output_dir = Path(cfg.telemetry.output_dir).resolve()
        self._cfg = cfg
        self._artifacts = output_dir / "mlartifacts"
        self.tracking_uri = tracking_uri or f"sqlite:///{output_dir / 'mlflow.db'}"
        self.experiment = experiment or cfg.hardware.project_name
        self._client: Any = None
        self.run_id: str | None = None
        """The MLflow run's id, once the run started (rank 0 only)."""

    def run_started(self, record: RunRecord) -> None:
        if record.rank not in (None, 0):
            return
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        Path(self._artifacts).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        found = client.get_experiment_by_name(self.experiment)
        experiment_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(
                self.experiment, artifact_location=self._artifacts.as_uri()
            )
        )
        run = client.create_run(
            experiment_id,
            run_name=record.run_id,
            tags={"orchestrator_fsm.run_dir": str(record.root)},
        )
        self._client, self.run_id = client, run.info.run_id
        params = [Param(k, v) for k, v in flat_params(redact_secrets(self._cfg.dump_serialized()))]
        for start in range(0, len(params), _BATCH):
            client.log_batch(self.run_id, params=params[start : start + _BATCH])

    def metrics(self, values: Mapping[str, float], step: int | None) -> None:
        self._log(values, step or 0)

    def summary(self, values: Mapping[str, float]) -> None:
        self._log(values, 0)

    def _log(self, values: Mapping[str, float], step: int) -> None:
        if self._client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now, step) for name, value in values.items()]
        self._client.log_batch(self.run_id, metrics=metrics)

    def run_ended(self, record: RunRecord) -> None:
        client, run_id = self._client, self.run_id
        if client is None or run_id is None:
            return
        try:
            for tag, value in _git_info(record.root / "reports").items():
                client.set_tag(run_id, tag, value)
            for folder in ("reports", "logs"):
                if (record.root / folder).is_dir():
                    client.log_artifacts(run_id, str(record.root / folder), folder)
        finally:
            client.set_terminated(run_id, MLFLOW_STATUS.get(record.status, "FAILED"))
