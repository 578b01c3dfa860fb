"""What capture and metrics cost a round trip when they are not used, and what the MLflow
observer costs a ``log_metrics`` call.

``python -m benchmarks.capture [-n ROUND_TRIPS] [--calls CALLS]`` (from the repository
root). Part one alternates two warm round trips (enter -> report -> exit) of a recipe
that names no observer and logs no metric: as shipped (the user's logging captured on
the root logger, warnings captured, observers asked for tracker links), and with those
code paths bypassed (the capture, the warnings capture and the observer hooks replaced
by no-ops). It reports both as min / median / p90 and the difference of the medians
next to the bypassed run's interquartile range: a difference inside that spread is no
measurable cost. Part two (when mlflow is installed) times ``log_metrics`` with the
MLflow observer on its SQLite store, per call and the run's ``__exit__``, sending at
every call (``flush_every: 1``) and buffered as shipped (``flush_every: 100``).
Not a test: nothing fails on a slow number.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

import yaml

from benchmarks._common import Sandbox, quiet_stderr, summarize
from orchestrator_fsm import Config, RootOrchestrator
from orchestrator_fsm.lifecycle import recorder as recorder_module
from orchestrator_fsm.mlflow_observer import FLUSH_EVERY
from orchestrator_fsm.observers import Observers
from orchestrator_fsm.phases import logging as logging_phase

__all__ = ["main", "measure_capture", "measure_mlflow_metrics"]

_WARMUP = 3


@contextlib.contextmanager
def _bypassed() -> Iterator[None]:
    """The capture and observer code paths replaced by no-ops (what a build without
    those features would run)."""
    saved = (
        logging_phase._capture_root,
        logging.captureWarnings,
        recorder_module.RunRecorder._keep_tracker_links,
        Observers.notify,
    )
    logging_phase._capture_root = lambda made, before: None  # type: ignore[assignment]
    logging.captureWarnings = lambda capture: None
    recorder_module.RunRecorder._keep_tracker_links = lambda self: None  # type: ignore[method-assign]
    Observers.notify = lambda self, method, *args: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        (
            logging_phase._capture_root,
            logging.captureWarnings,
            recorder_module.RunRecorder._keep_tracker_links,
            Observers.notify,
        ) = saved  # type: ignore[method-assign]


def _round_trip(cfg: Config) -> float:
    t0 = time.perf_counter()
    with RootOrchestrator(cfg) as orch:
        orch.log_environment_report()
    return time.perf_counter() - t0


def _iqr_ms(samples: Sequence[float]) -> float:
    if len(samples) < 2:
        return 0.0
    quartiles = statistics.quantiles(samples, n=4, method="inclusive")
    return round((quartiles[2] - quartiles[0]) * 1000, 3)


def measure_capture(iterations: int) -> dict[str, Any]:
    """Round trips with capture and metrics unused, as shipped and bypassed."""
    shipped: list[float] = []
    bypassed: list[float] = []
    with Sandbox("capture") as box, quiet_stderr():
        cfg = Config.from_recipe(box.recipe("capture"))
        for _ in range(_WARMUP):
            _round_trip(cfg)
            with _bypassed():
                _round_trip(cfg)
        for _ in range(iterations):
            shipped.append(_round_trip(cfg))
            with _bypassed():
                bypassed.append(_round_trip(cfg))
    shipped_ms, bypassed_ms = summarize(shipped), summarize(bypassed)
    difference = round(float(shipped_ms["median"]) - float(bypassed_ms["median"]), 3)
    spread = _iqr_ms(bypassed)
    return {
        "unused_ms": shipped_ms,
        "bypassed_ms": bypassed_ms,
        "median_difference_ms": difference,
        "bypassed_iqr_ms": spread,
        "measurable": abs(difference) > spread,
    }


def _mlflow_calls(box: Sandbox, calls: int, flush_every: int) -> dict[str, Any]:
    data = yaml.safe_load(box.recipe(f"mlflow{flush_every}").read_text(encoding="utf-8"))
    data["telemetry"]["observers"] = {"mlflow": {"flush_every": flush_every}}
    per_call: list[float] = []
    with RootOrchestrator(Config.from_dict(data), rank=0, local_rank=0) as orch:
        for i in range(calls):
            t0 = time.perf_counter()
            orch.log_metrics({"loss": 1.0 / (i + 1), "acc": 0.5}, step=i)
            per_call.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    exit_ms = (time.perf_counter() - t0) * 1000
    return {
        "flush_every": flush_every,
        "calls": calls,
        "log_metrics_us": summarize(per_call, scale=1e6),
        "mean_us": round(statistics.fmean(per_call) * 1e6, 3),
        "exit_ms": round(exit_ms, 3),
    }


def measure_mlflow_metrics(calls: int) -> dict[str, Any] | None:
    """``log_metrics`` with the MLflow observer on SQLite, per call (µs) and the run's
    ``__exit__`` (ms): sending every call (``flush_every: 1``, the unbuffered cost) and
    buffered as shipped (``flush_every: 100``); None when mlflow is not installed."""
    if importlib.util.find_spec("mlflow") is None:
        return None
    with Sandbox("mlflow") as box, quiet_stderr():
        return {
            "every_call": _mlflow_calls(box, calls, 1),
            "buffered": _mlflow_calls(box, calls, FLUSH_EVERY),
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capture", description=__doc__)
    parser.add_argument("-n", "--iterations", type=int, default=40, help="round trips (40)")
    parser.add_argument("--calls", type=int, default=500, help="MLflow log_metrics calls (500)")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"capture": measure_capture(max(1, args.iterations))}
    result["mlflow"] = measure_mlflow_metrics(max(1, args.calls))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
