"""The cost of one ``orch.log_metrics`` call, and of the bare append underneath it.

``python -m benchmarks.metrics [-n CALLS]`` (from the repository root) opens one run in
a :class:`~benchmarks._common.Sandbox`, calls ``log_metrics({"loss": .., "acc": ..},
step=i)`` ``CALLS`` times in batches of 100 and reports the per-call time of each batch
in microseconds, next to ``append_whole`` of a line of the same size (the floor: one
``open``/``write``/``close``). The target is a median of at most 50 µs per call. Not a
test: nothing fails on a slow number.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from benchmarks._common import Sandbox, quiet_stderr, summarize
from orchestrator_fsm import Config, RootOrchestrator
from orchestrator_fsm._fs import append_whole

__all__ = ["TARGET_US", "main", "measure_metrics"]

#: The per-call target for ``log_metrics`` (median, microseconds).
TARGET_US: Final = 50.0
_BATCH: Final = 100


def _per_call(work: Callable[[int], object], calls: int) -> list[float]:
    """Seconds per call of ``work(i)``, one figure per batch of :data:`_BATCH` calls."""
    figures = []
    for start in range(0, calls, _BATCH):
        t0 = time.perf_counter()
        for i in range(start, start + _BATCH):
            work(i)
        figures.append((time.perf_counter() - t0) / _BATCH)
    return figures


def measure_metrics(calls: int) -> dict[str, Any]:
    """``{"log_metrics_us": ..., "append_whole_us": ..., "target_us": ..., "met": ...}``."""
    with Sandbox("metrics") as box, quiet_stderr():
        cfg = Config.from_recipe(box.recipe("metrics"))
        with RootOrchestrator(cfg, rank=0, local_rank=0) as orch:
            assert orch.paths is not None
            _per_call(lambda i: orch.log_metrics({"loss": 1.0 / (i + 1), "acc": 0.5}, i), 200)
            ours = _per_call(
                lambda i: orch.log_metrics({"loss": 1.0 / (i + 1), "acc": 0.5}, step=i), calls
            )
            floor_path = orch.paths.root / "floor.jsonl"
            line = json.dumps({"time": "2026-01-01T00:00:00+00:00", "loss": 0.5, "acc": 0.5})
            floor = _per_call(lambda i: append_whole(floor_path, line + "\n"), calls)
    result = {
        "calls": calls,
        "log_metrics_us": summarize(ours, scale=1e6),
        "append_whole_us": summarize(floor, scale=1e6),
        "target_us": TARGET_US,
    }
    result["met"] = result["log_metrics_us"]["median"] <= TARGET_US
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics", description=__doc__)
    parser.add_argument("-n", "--calls", type=int, default=20_000, help="calls (default 20000)")
    args = parser.parse_args(argv)
    print(json.dumps(measure_metrics(max(_BATCH, args.calls)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
