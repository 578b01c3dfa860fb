"""The TensorBoard observer writes real event files, read back with TensorBoard's own reader."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator_fsm import ConfigError, read_run
from orchestrator_fsm.orchestrator import RootOrchestrator

ConfigFactory = Callable[..., Any]


@pytest.mark.parametrize("ending", [None, RuntimeError("diverged")])
def test_metrics_and_summary_become_scalars_in_the_run_directory(
    make_config: ConfigFactory, ending: BaseException | None
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    orch = RootOrchestrator(make_config(telemetry={"observers": ["tensorboard"]}))
    with pytest.raises(RuntimeError) if ending is not None else contextlib.nullcontext(), orch:
        orch.log_metrics({"loss": 0.5, "acc": 0.25}, step=1)
        orch.log_metrics({"loss": 0.125}, step=2)
        orch.log_metrics({"loss": 0.0625})
        orch.log_summary({"final_acc": 0.9})
        if ending is not None:
            raise ending
    assert orch.paths is not None
    assert read_run(orch.paths.root).status == ("completed" if ending is None else "failed")
    events = EventAccumulator(str(orch.paths.root / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["acc", "loss", "summary/final_acc"]
    loss = [(e.step, e.value) for e in events.Scalars("loss")]
    assert loss == [(1, 0.5), (2, 0.125), (3, 0.0625)]
    assert [(e.step, e.value) for e in events.Scalars("acc")] == [(1, 0.25)]
    (final,) = events.Scalars("summary/final_acc")
    assert final.step == 0 and final.value == pytest.approx(0.9)


def test_tensorboard_configured_but_missing_is_a_config_error_naming_the_field(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    cfg = make_config(telemetry={"observers": ["tensorboard"]})
    with pytest.raises(ConfigError) as caught:
        RootOrchestrator(cfg)
    message = str(caught.value)
    assert "telemetry.observers.tensorboard" in message
    assert "pip install 'orchestrator-fsm[tensorboard]'" in message
