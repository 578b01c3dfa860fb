"""Child process of the cold-start and concurrency benchmarks (run by path, not imported).

Usage: ``python _worker.py torch`` (import torch only), ``python _worker.py import``
(import torch, then orchestrator_fsm) or ``python _worker.py roundtrip RECIPE [--wait]``
(one enter -> report -> exit; with ``--wait`` it prints ``ready`` once imported and
waits for a line on stdin before starting, so that many workers start together).

Prints one JSON line: the seconds spent importing, loading the recipe and in the round
trip, and ``start`` / ``end`` of the round trip on ``time.monotonic`` (CLOCK_MONOTONIC
on Linux, comparable across processes).
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("torch", "import", "roundtrip"):
        print(f"usage: _worker.py torch|import|roundtrip RECIPE [--wait]; got {argv}", file=sys.stderr)
        return 2
    mode = argv[0]
    result: dict[str, float] = {}
    t0 = time.perf_counter()
    import torch  # noqa: F401  (the baseline every mode pays)

    result["import_torch_s"] = time.perf_counter() - t0
    if mode == "torch":
        print(json.dumps(result), flush=True)
        return 0

    t1 = time.perf_counter()
    from orchestrator_fsm import Config, RootOrchestrator

    result["import_package_s"] = time.perf_counter() - t1
    if mode == "import":
        print(json.dumps(result), flush=True)
        return 0

    if len(argv) < 2:
        print("usage: _worker.py roundtrip RECIPE [--wait]", file=sys.stderr)
        return 2
    if "--wait" in argv[2:]:
        print("ready", flush=True)
        sys.stdin.readline()
    start = time.monotonic()
    t2 = time.perf_counter()
    cfg = Config.from_recipe(argv[1])
    t3 = time.perf_counter()
    with RootOrchestrator(cfg) as orch:
        orch.log_environment_report()
    end = time.monotonic()
    result.update(
        config_s=t3 - t2,
        roundtrip_s=time.perf_counter() - t3,
        start=start,
        end=end,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
