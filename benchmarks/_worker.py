"""Child process of the cold-start and concurrency benchmarks (run by path, not imported).

Usage: ``python _worker.py MODE [RECIPE] [--collect] [--wait]`` where MODE is
``torch`` (import torch only), ``import`` (import torch, then orchestrator_fsm),
``roundtrip`` (that, then load RECIPE and do one enter -> report -> exit) or ``floor``
(import torch, then the hand-written round trip of ``floor.py`` on RECIPE: what the
same process costs with no framework at all).
``--collect`` runs a full ``gc.collect()`` right after importing torch, paying the
collection that torch's import leaves owed (see benchmarks/README.md). ``--wait``
prints ``ready`` once imported and the recipe loaded, and waits for a line on stdin
before the round trip, so that many workers start it together; after reporting it
waits for stdin to close before exiting, so that no worker's interpreter shutdown (a
few hundred ms of CPU with torch loaded) competes with the round trips of the others.

Prints one JSON line: the seconds spent importing, loading the recipe and in the round
trip (and in each of its steps), and on ``time.monotonic`` (CLOCK_MONOTONIC on Linux,
comparable across processes): ``torch_done_at`` (torch imported, and collected with
``--collect``), ``start`` / ``end`` of the round trip and ``finished_at`` (just before
the interpreter starts shutting down).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any

# Run by path, Python puts this folder first on sys.path; its modules (floor, scale...)
# must not shadow any top-level module that torch or the package might import.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]


def _finish(result: dict[str, Any]) -> int:
    result["finished_at"] = time.monotonic()
    print(json.dumps(result), flush=True)
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="_worker.py")
    parser.add_argument("mode", choices=("torch", "import", "roundtrip", "floor"))
    parser.add_argument("recipe", nargs="?")
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--wait", action="store_true")
    args = parser.parse_args(argv)
    if args.mode in ("roundtrip", "floor") and args.recipe is None:
        parser.error(f"{args.mode} needs a RECIPE")
    return args


def _floor(recipe: str, result: dict[str, Any]) -> int:
    """The hand-written round trip (``floor.py``, loaded from beside this file) on
    ``recipe``: its output folder as the recipe says, its lock file in the cache dir."""
    import importlib.util
    from pathlib import Path

    t0 = time.perf_counter()
    spec = importlib.util.spec_from_file_location(
        "_bench_floor", Path(__file__).with_name("floor.py")
    )
    assert spec is not None and spec.loader is not None
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    import yaml

    config = yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
    run = floor.FloorRun(
        config,
        output_dir=Path(config["telemetry"]["output_dir"]),
        lock_path=Path(os.environ["XDG_CACHE_HOME"]) / "floor-locks" / "floor.lock",
    )
    result["import_package_s"] = time.perf_counter() - t0
    start = time.monotonic()
    t1 = time.perf_counter()
    floor.floor_round_trip(run)
    result["roundtrip_s"] = time.perf_counter() - t1
    result.update(start=start, end=time.monotonic(), steps={})
    return _finish(result)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    result: dict[str, Any] = {}
    t0 = time.perf_counter()
    import torch  # noqa: F401  (the baseline every mode pays)

    result["import_torch_s"] = time.perf_counter() - t0
    if args.collect:
        t0 = time.perf_counter()
        gc.collect()
        result["collect_s"] = time.perf_counter() - t0
    result["torch_done_at"] = time.monotonic()
    if args.mode == "torch":
        return _finish(result)

    if args.mode == "floor":
        return _floor(args.recipe, result)

    t1 = time.perf_counter()
    from orchestrator_fsm import Config, RootOrchestrator

    result["import_package_s"] = time.perf_counter() - t1
    if args.mode == "import":
        return _finish(result)

    t2 = time.perf_counter()
    cfg = Config.from_recipe(args.recipe)
    result["config_s"] = time.perf_counter() - t2
    if args.wait:
        print("ready", flush=True)
        sys.stdin.readline()
    start = time.monotonic()
    t3 = time.perf_counter()
    with RootOrchestrator(cfg) as orch:
        orch.log_environment_report()
    result["roundtrip_s"] = time.perf_counter() - t3
    end = time.monotonic()
    steps: dict[str, float] = {}
    for record in orch.machine.history:
        steps[record.step] = steps.get(record.step, 0.0) + record.duration_s
    result.update(start=start, end=end, steps=steps)
    _finish(result)
    if args.wait:
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
