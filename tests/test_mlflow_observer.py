"""The MLflow observer against a real SQLite store, read back with MlflowClient."""

from __future__ import annotations

import os
import signal
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


def test_importing_the_package_never_imports_mlflow_or_tensorboard() -> None:
    code = (
        "import sys, orchestrator_fsm, orchestrator_fsm.mlflow_observer, orchestrator_fsm.cli\n"
        "import orchestrator_fsm.tensorboard_observer\n"
        "trackers = ('mlflow', 'tensorboard')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in trackers))"
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


@pytest.mark.slow
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


def _store(cfg: Any) -> str:
    return f"sqlite:///{Path(cfg.telemetry.output_dir).resolve() / 'mlflow.db'}"


@pytest.mark.slow
def test_git_commit_and_branch_become_source_tags_in_a_real_checkout(
    make_config: ConfigFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    existing_mlflow_store: Callable[[Path], Path],
) -> None:
    existing_mlflow_store(tmp_path / "outputs")
    from mlflow.tracking import MlflowClient

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@x"
    for command in (
        ["git", "init", "-q", "-b", "feature/shapes"],
        ["git", "commit", "-q", "--allow-empty", "-m", "first"],
    ):
        subprocess.run(command, cwd=checkout, check=True, env={**os.environ, **env}, timeout=60)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.chdir(checkout)
    cfg = make_config(telemetry={"observers": ["mlflow"]})
    root = run_with_mlflow(cfg, None)

    client = MlflowClient(tracking_uri=_store(cfg))
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == root.name
    assert run.data.tags["mlflow.source.git.commit"] == head
    assert run.data.tags["mlflow.source.git.branch"] == "feature/shapes"


# A run that mirrors into MLflow, says where its record is, and waits to be killed.
KILLED_RUN = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from conftest import minimal_recipe
from orchestrator_fsm import Config, RootOrchestrator

observers = {"mlflow": {"flush_every": 2}}
recipe = minimal_recipe(Path(sys.argv[1]), telemetry={"observers": observers})
with RootOrchestrator(Config.from_dict(recipe), rank=0, local_rank=0) as orch:
    for step, loss in ((1, 0.5), (2, 0.25), (3, 0.125)):
        orch.log_metrics({"loss": loss}, step=step)
    print(orch.paths.root, flush=True)
    time.sleep(600)
"""


def _killed_run(tmp_path: Path) -> tuple[Path, str]:
    """A run SIGKILLed while live: its run directory and its MLflow run id."""
    script = tmp_path / "killed.py"
    script.write_text(KILLED_RUN, encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        root = Path(process.stdout.readline().strip())
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    from orchestrator_fsm import read_run

    record = read_run(root)
    link = record.trackers["mlflow"]
    assert link["tracking_uri"].startswith("sqlite:///")
    return root, link["run_id"]


@pytest.mark.slow
@pytest.mark.parametrize("reconciled_by", ["next run", "inspect"])
def test_a_sigkilled_run_is_set_failed_by_the_next_run_or_by_inspect(
    make_config: ConfigFactory,
    tmp_path: Path,
    reconciled_by: str,
    existing_mlflow_store: Callable[[Path], Path],
) -> None:
    existing_mlflow_store(tmp_path / "outputs")
    from mlflow.tracking import MlflowClient

    from orchestrator_fsm import run_status
    from orchestrator_fsm.cli.main import main
    from orchestrator_fsm.mlflow_observer import RECONCILED_TAG

    root, mlflow_run_id = _killed_run(tmp_path)
    cfg = make_config(telemetry={"observers": ["mlflow"]})
    client = MlflowClient(tracking_uri=_store(cfg))
    assert run_status(root) == "crashed"
    assert client.get_run(mlflow_run_id).info.status == "RUNNING"

    if reconciled_by == "next run":
        second = run_with_mlflow(cfg, None)
        assert second != root
    else:
        assert main(["inspect", str(root)]) == 0

    killed = client.get_run(mlflow_run_id)
    assert killed.info.status == "FAILED"
    assert killed.info.end_time is not None
    assert killed.info.end_time >= killed.info.start_time
    assert "says crashed" in killed.data.tags[RECONCILED_TAG]
    # Sent every 2 calls: the third, still buffered when the process was killed, is
    # only in metrics.jsonl.
    history = client.get_metric_history(mlflow_run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    assert len((root / "metrics.jsonl").read_text(encoding="utf-8").splitlines()) == 3
    # Reconciling again changes nothing.
    assert main(["inspect", str(root)]) == 0
    assert client.get_run(mlflow_run_id).info.end_time == killed.info.end_time


@pytest.mark.slow
def test_a_live_run_in_the_same_store_is_left_running(
    make_config: ConfigFactory, tmp_path: Path, existing_mlflow_store: Callable[[Path], Path]
) -> None:
    existing_mlflow_store(tmp_path / "outputs")
    from mlflow.tracking import MlflowClient

    cfg = make_config(telemetry={"observers": ["mlflow"]})
    client = MlflowClient(tracking_uri=_store(cfg))
    with RootOrchestrator(cfg, rank=0, local_rank=0) as first:
        assert first.paths is not None
        (first_id,) = [
            r.info.run_id
            for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
        ]
        other_lock = {"lock": {"path": str(tmp_path / "other.lock")}}
        second = run_with_mlflow(
            make_config(telemetry={"observers": ["mlflow"]}, infrastructure=other_lock), None
        )
        assert second != first.paths.root
        assert client.get_run(first_id).info.status == "RUNNING"
    assert client.get_run(first_id).info.status == "FINISHED"


def test_inspect_never_imports_mlflow_for_a_run_that_names_no_mlflow_run(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    with RootOrchestrator(make_config(), rank=0, local_rank=0) as orch:
        assert orch.paths is not None
        root = orch.paths.root
    code = (
        "import sys\nfrom orchestrator_fsm.cli.main import main\n"
        f"assert main(['inspect', {str(root)!r}]) == 0\n"
        "print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert "IMPORTED []" in done.stdout


@pytest.mark.slow
def test_metrics_are_sent_in_batches_of_flush_every_calls(
    make_config: ConfigFactory, tmp_path: Path, existing_mlflow_store: Callable[[Path], Path]
) -> None:
    existing_mlflow_store(tmp_path / "outputs")
    from mlflow.tracking import MlflowClient

    cfg = make_config(telemetry={"observers": {"mlflow": {"flush_every": 3}}})
    client = MlflowClient(tracking_uri=_store(cfg))
    sent = []
    with RootOrchestrator(cfg, rank=0, local_rank=0) as orch:
        for step in range(1, 5):
            orch.log_metrics({"loss": 1.0 / step}, step=step)
            (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
            sent.append(len(client.get_metric_history(run.info.run_id, "loss")))
    assert sent == [0, 0, 3, 3]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4


@pytest.mark.parametrize(
    ("options", "named"),
    [({"flush_every": 0}, "flush_every"), ({"flush_every_s": -1}, "flush_every_s")],
)
def test_a_bad_flush_option_is_a_config_error_at_the_observer(
    make_config: ConfigFactory, options: dict[str, Any], named: str
) -> None:
    pytest.importorskip("mlflow")
    from orchestrator_fsm import ConfigError

    cfg = make_config(telemetry={"observers": {"mlflow": options}})
    with pytest.raises(ConfigError, match=r"telemetry\.observers\.mlflow") as caught:
        RootOrchestrator(cfg, rank=0, local_rank=0)
    assert named in str(caught.value)
