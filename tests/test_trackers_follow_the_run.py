"""Trackers follow the run: a later attempt of a run (``run --resume`` after a SIGTERM,
a forced resume with another config) logs into the MLflow run of the first attempt and
goes on in the same TensorBoard folder, one point per step; a launch refused at the
run lock makes no MLflow run. Real two-attempt runs through the command line, a real
MLflow SQLite store, real events files read back with TensorBoard's EventAccumulator."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator_fsm import read_run
from orchestrator_fsm.layout import RUN_FILE
from tests.conftest import cli, cli_command, minimal_recipe, wait_for, write_recipe

# Logs loss = step + attempt/10 from step START to 6; with STOP_AFTER it marks the run
# directory after that step and waits for the signal that stops it. A later attempt
# first notes the status of the MLflow run its record names.
PIPELINE = textwrap.dedent(
    """
    import os, time

    from orchestrator_fsm import read_run

    def main(orch):
        attempt = orch.attempt.number
        root = orch.paths.root
        link = read_run(root).trackers.get("mlflow")
        if attempt > 1 and link is not None:
            from mlflow.tracking import MlflowClient

            run = MlflowClient(link["tracking_uri"]).get_run(link["run_id"])
            (root / f"mlflow_status_{attempt}.txt").write_text(run.info.status)
        stop_after = int(os.environ.get("STOP_AFTER", "0"))
        for step in range(int(os.environ.get("START", "1")), 7):
            orch.log_metrics({"loss": step + attempt / 10}, step=step)
            if step == stop_after:
                (root / "stopping").write_text("")
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    time.sleep(0.05)
        if os.environ.get("HOLD"):
            (root / "holding").write_text("")
            while not os.path.exists(os.environ["HOLD"]):
                time.sleep(0.05)
    """
)


def _recipe(tmp_path: Path, observers: Any, **training: Any) -> Path:
    (tmp_path / "train.py").write_text(PIPELINE, encoding="utf-8")
    recipe = minimal_recipe(tmp_path, telemetry={"observers": observers})
    recipe["training"].update(training)
    return write_recipe(tmp_path, recipe, f"recipe{len(training)}.yaml")


def _start(tmp_path: Path, recipe: Path, *argv: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_command("run", str(recipe), "--entry", "train.py:main", *argv),
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "250", **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(tmp_path: Path, proc: subprocess.Popen[str], marker: str) -> Path:
    (hit,) = wait_for(lambda: list((tmp_path / "outputs").glob(f"*/{marker}")), proc)
    return hit.parent


def _finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _client(tmp_path: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")


def _all_runs(client: Any) -> list[Any]:
    from mlflow.entities import ViewType

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return list(client.search_runs(experiments, run_view_type=ViewType.ALL))


def _sigtermed_then_resumed(tmp_path: Path, observers: Any) -> Path:
    """A run stopped by SIGTERM after step 4, then resumed by the command line from its
    checkpoint at step 2 (steps 3 and 4 done again, then 5 and 6); its directory."""
    recipe = _recipe(tmp_path, observers)
    first = _start(tmp_path, recipe, STOP_AFTER="4")
    root = _wait(tmp_path, first, "stopping")
    first.send_signal(signal.SIGTERM)
    out, err = _finish(first)
    assert first.returncode == 128 + signal.SIGTERM, out + err
    assert read_run(root).status == "interrupted"
    env = {**os.environ, "START": "3"}
    argv = ("run", str(recipe), "--entry", "train.py:main", "--resume", str(root))
    resumed = cli(*argv, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    record = read_run(root)
    assert [a.status for a in record.attempts] == ["interrupted", "completed"]
    return root


@pytest.mark.slow
def test_a_resumed_run_logs_into_the_same_mlflow_run_and_tensorboard_folder(
    tmp_path: Path, existing_mlflow_store: Callable[[Path], Path]
) -> None:
    existing_mlflow_store(tmp_path / "outputs")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from orchestrator_fsm.mlflow_observer import ATTEMPT_TAG
    from orchestrator_fsm.tensorboard_observer import TENSORBOARD_DIR

    client = _client(tmp_path)
    root = _sigtermed_then_resumed(tmp_path, ["mlflow", "tensorboard"])

    # Steps 3 and 4, done again by attempt 2, keep attempt 1's point; the step axis
    # goes on with attempt 2's 5 and 6, one point per step. TensorBoard: the same
    # folder, an events file per attempt.
    expected = [(1, 1.1), (2, 2.1), (3, 3.1), (4, 4.1), (5, 5.2), (6, 6.2)]
    folder = root / TENSORBOARD_DIR
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    events = EventAccumulator(str(folder))
    events.Reload()
    loss = [(e.step, round(e.value, 6)) for e in events.Scalars("loss")]
    assert loss == expected

    # One MLflow run for the run directory, the one its record names: RUNNING again
    # while attempt 2 ran, then attempt 2's status.
    (run,) = _all_runs(client)
    assert read_run(root).trackers["mlflow"]["run_id"] == run.info.run_id
    assert (root / "mlflow_status_2.txt").read_text(encoding="utf-8") == "RUNNING"
    assert run.info.status == "FINISHED"
    assert run.data.tags[ATTEMPT_TAG] == "2"
    assert run.data.params["training.seed"] == "1234"
    # MLflow: the same points.
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == expected


@pytest.mark.slow
def test_a_forced_resume_with_another_config_logs_its_changed_params_beside_the_first(
    tmp_path: Path, existing_mlflow_store: Callable[[Path], Path]
) -> None:
    existing_mlflow_store(tmp_path / "outputs")
    from orchestrator_fsm.mlflow_observer import ABSENT, ATTEMPT_TAG

    client = _client(tmp_path)
    recipe = _recipe(tmp_path, ["mlflow"], note="first")
    first = cli("run", str(recipe), "--entry", "train.py:main", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (root,) = [path.parent for path in (tmp_path / "outputs").glob(f"*/{RUN_FILE}")]
    other = _recipe(tmp_path, ["mlflow"], seed=99, lr=0.5)
    argv = ("run", str(other), "--entry", "train.py:main", "--resume", str(root), "--force")
    forced = cli(*argv, cwd=tmp_path, env={**os.environ, "START": "7"})
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "MLflow" not in forced.stderr and "observer" not in forced.stderr, forced.stderr

    (run,) = _all_runs(client)
    assert run.info.status == "FINISHED"
    assert run.data.tags[ATTEMPT_TAG] == "2"
    params = run.data.params
    # MLflow keeps a param's first value: attempt 1's stay, attempt 2's differences
    # are beside them under its number.
    assert (params["training.seed"], params["training.note"]) == ("1234", "first")
    assert params["attempt2.training.seed"] == "99"
    assert params["attempt2.training.lr"] == "0.5"
    assert params["attempt2.training.note"] == ABSENT
    assert "attempt2.dataset.name" not in params


@pytest.mark.slow
def test_a_launch_refused_at_the_lock_makes_no_mlflow_run(
    tmp_path: Path, existing_mlflow_store: Callable[[Path], Path]
) -> None:
    existing_mlflow_store(tmp_path / "outputs")
    client = _client(tmp_path)
    recipe = _recipe(tmp_path, ["mlflow"])
    release = tmp_path / "release"
    live = _start(tmp_path, recipe, HOLD=str(release))
    try:
        root = _wait(tmp_path, live, "holding")
        (held,) = _all_runs(client)
        refused = cli("run", str(recipe), "--entry", "train.py:main", cwd=tmp_path)
        assert refused.returncode != 0
        assert "lock" in refused.stderr, refused.stderr
        # The refused launch neither made an MLflow run nor touched the live one's.
        (still,) = _all_runs(client)
        assert still.info.run_id == held.info.run_id
        assert still.info.status == "RUNNING"
    finally:
        release.touch()
        out, err = _finish(live)
    assert live.returncode == 0, out + err
    assert client.get_run(held.info.run_id).info.status == "FINISHED"
    assert read_run(root).trackers["mlflow"]["run_id"] == held.info.run_id


@pytest.mark.slow
def test_an_attempt_killed_outright_leaves_the_one_mlflow_run_for_inspect_to_end(
    tmp_path: Path, existing_mlflow_store: Callable[[Path], Path]
) -> None:
    existing_mlflow_store(tmp_path / "outputs")
    from orchestrator_fsm.cli.main import main
    from orchestrator_fsm.mlflow_observer import RECONCILED_TAG

    client = _client(tmp_path)
    recipe = _recipe(tmp_path, {"mlflow": {"flush_every": 1}})
    first = _start(tmp_path, recipe, STOP_AFTER="2")
    root = _wait(tmp_path, first, "stopping")
    first.send_signal(signal.SIGTERM)
    _finish(first)
    (root / "stopping").unlink()
    second = _start(tmp_path, recipe, "--resume", str(root), START="3", STOP_AFTER="4")
    _wait(tmp_path, second, "stopping")
    (run,) = _all_runs(client)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    second.send_signal(signal.SIGKILL)
    _finish(second)

    # The MLflow run mirrors the whole run directory: attempt 2 crashed, so FAILED
    # (not attempt 1's KILLED), with every step sent before the kill.
    assert main(["inspect", str(root)]) == 0
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "FAILED"
    assert "says crashed" in ended.data.tags[RECONCILED_TAG]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
