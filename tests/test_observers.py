"""Observers hear what the run records, in order, and one that fails never breaks it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from orchestrator_fsm import Observer, RunInterrupted, RunRecord, TransitionRecord
from orchestrator_fsm.orchestrator import RootOrchestrator

ConfigFactory = Callable[..., Any]


class Recording(Observer):
    def __init__(self) -> None:
        self.heard: list[tuple[str, Any]] = []

    def run_started(self, record: RunRecord) -> None:
        self.heard.append(("run_started", record.status))

    def transition(self, step: TransitionRecord) -> None:
        self.heard.append(("transition", step.step))

    def metrics(self, values: Mapping[str, float], step: int | None) -> None:
        self.heard.append(("metrics", (dict(values), step)))

    def summary(self, values: Mapping[str, float]) -> None:
        self.heard.append(("summary", dict(values)))

    def run_ended(self, record: RunRecord) -> None:
        self.heard.append(("run_ended", (record.status, dict(record.summary))))


def test_an_observer_hears_start_steps_metrics_summary_and_the_true_end(
    make_config: ConfigFactory,
) -> None:
    seen = Recording()
    with RootOrchestrator(make_config(), rank=0, local_rank=0, observers=[seen]) as orch:
        orch.log_metrics({"loss": 0.5}, step=1)
        orch.log_summary({"acc": 0.9})
    kinds = [kind for kind, _ in seen.heard]
    assert kinds[0] == "run_started" and seen.heard[0][1] == "running"
    assert ("metrics", ({"loss": 0.5}, 1)) in seen.heard
    assert ("summary", {"acc": 0.9}) in seen.heard
    assert seen.heard[-1] == ("run_ended", ("completed", {"acc": 0.9}))
    steps = [value for kind, value in seen.heard if kind == "transition"]
    assert steps[0] == "provision" and steps[-1] == "cleanup"
    assert kinds.count("run_ended") == 1


@pytest.mark.parametrize(
    ("raised", "status"),
    [(RuntimeError("boom"), "failed"), (RunInterrupted(15), "interrupted")],
)
def test_run_ended_carries_a_failed_or_interrupted_status(
    make_config: ConfigFactory, raised: BaseException, status: str
) -> None:
    seen = Recording()
    with (
        pytest.raises(type(raised)),
        RootOrchestrator(make_config(), rank=0, local_rank=0, observers=[seen]),
    ):
        raise raised
    assert seen.heard[-1][0] == "run_ended"
    assert seen.heard[-1][1][0] == status


class Broken:
    """Not an Observer subclass: only the methods it has are called."""

    def __init__(self) -> None:
        self.calls = 0

    def metrics(self, values: Mapping[str, float], step: int | None) -> None:
        self.calls += 1
        raise OSError("tracker unreachable")


def test_a_raising_observer_is_reported_once_and_never_breaks_the_run(
    make_config: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    broken, seen = Broken(), Recording()
    cfg = make_config()
    with RootOrchestrator(cfg, rank=0, local_rank=0, observers=[broken, seen]) as orch:
        orch.log_metrics({"loss": 0.5})
        orch.log_metrics({"loss": 0.4})
    assert broken.calls == 2
    assert [v for kind, v in seen.heard if kind == "metrics"] == [
        ({"loss": 0.5}, None),
        ({"loss": 0.4}, None),
    ]
    assert orch.record is not None and orch.record.status == "completed"
    err = capsys.readouterr().err
    assert err.count("observer Broken.metrics failed (OSError: tracker unreachable)") == 1


def test_the_recipe_names_observer_factories_called_with_the_config_and_options(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    (tmp_path / "my_observers.py").write_text(
        "from pathlib import Path\n"
        "from orchestrator_fsm import Observer\n"
        "class Tracker(Observer):\n"
        "    def __init__(self, cfg, *, note):\n"
        "        self.note = Path(note)\n"
        "    def run_ended(self, record):\n"
        "        self.note.write_text(record.status)\n",
        encoding="utf-8",
    )
    spec = f"{tmp_path / 'my_observers.py'}:Tracker"
    note = tmp_path / "ended.txt"
    cfg = make_config(telemetry={"observers": {spec: {"note": str(note)}}})
    with RootOrchestrator(cfg, rank=0, local_rank=0):
        pass
    assert note.read_text() == "completed"


def test_an_observer_factory_that_cannot_be_made_is_a_config_error(
    make_config: ConfigFactory,
) -> None:
    from orchestrator_fsm import ConfigError

    cfg = make_config(telemetry={"observers": ["orchestrator_fsm.observers:Nothing"]})
    with pytest.raises(ConfigError, match=r"telemetry\.observers\.orchestrator_fsm"):
        RootOrchestrator(cfg, rank=0, local_rank=0)


class Linking(Observer):
    def __init__(self, link: Any) -> None:
        self.link = link

    def tracker_link(self) -> Any:
        if isinstance(self.link, Exception):
            raise self.link
        return self.link


def test_a_tracker_link_is_kept_in_run_json(make_config: ConfigFactory) -> None:
    from orchestrator_fsm import read_run

    linked = Linking(("mytracker", {"run_id": "abc", "tracking_uri": "file:///t"}))
    with RootOrchestrator(make_config(), rank=0, local_rank=0, observers=[linked]) as orch:
        assert orch.paths is not None
        assert read_run(orch.paths.root).trackers == {
            "mytracker": {"run_id": "abc", "tracking_uri": "file:///t"}
        }
    assert read_run(orch.paths.root).trackers["mytracker"]["run_id"] == "abc"


def test_a_failing_tracker_link_is_reported_and_the_run_goes_on(
    make_config: ConfigFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    from orchestrator_fsm import read_run

    broken = Linking(RuntimeError("no tracker"))
    with RootOrchestrator(make_config(), rank=0, local_rank=0, observers=[broken]) as orch:
        pass
    assert orch.paths is not None
    record = read_run(orch.paths.root)
    assert record.status == "completed" and record.trackers == {}
    assert (
        "observer Linking.tracker_link failed (RuntimeError: no tracker)" in capfd.readouterr().err
    )
