"""The reference system's own case: its mini-CNN recipe, strict, started in a git checkout.

The recipe is ``tests/recipes/orchard_like_mini_cnn.yaml`` (``reproducible: true``, so
strict determinism; also measured with it off), the working directory a small git
checkout with one modified file, so the manifest records a commit, a dirty flag and a
diff. For each of the two modes:

- **warm**: ours and the hand-written floor (``floor.py``, which then also runs the
  checkout's git commands and sets strict mode's flags), interleaved in one process,
  with stderr not a terminal and again with stderr claiming to be one (rich console);
- **first round trip**: what the first round trip costs in a fresh interpreter
  (``roundtrip_s`` of ``_worker.py``), against the warm median;
- **cold**: how much longer a process that imports the package, loads the recipe and
  does one round trip lives after ``import torch`` than one that only imports torch
  (spawn to exit measured from outside; see ``cold.py``), and the same for a process
  that does the hand-written round trip of ``floor.py`` instead.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import yaml

from benchmarks._common import Sandbox, quiet_stderr, summarize
from benchmarks.cold import spawn_worker
from benchmarks.floor import FloorRun, floor_round_trip
from benchmarks.warm import round_trip
from orchestrator_fsm import Config

__all__ = ["measure_orchard"]

_WARMUP = 3
_MODES = ("strict", "relaxed")


def _warm_pair(cfg: Config, floor: FloorRun, iterations: int, *, terminal: bool) -> dict[str, Any]:
    """Ours and the floor, alternating, ``iterations`` times each after a warm-up."""
    ours: list[float] = []
    floors: list[float] = []
    steps: dict[str, list[float]] = {}
    with quiet_stderr(as_terminal=terminal):
        for _ in range(_WARMUP):
            round_trip(cfg)
            floor_round_trip(floor)
        for _ in range(iterations):
            elapsed, per_step = round_trip(cfg)
            ours.append(elapsed)
            for step, seconds in per_step.items():
                steps.setdefault(step, []).append(seconds)
            t0 = time.perf_counter()
            floor_round_trip(floor)
            floors.append(time.perf_counter() - t0)
    return {
        "round_trip_ms": summarize(ours),
        "floor_ms": summarize(floors),
        "ratio_median": round(statistics.median(ours) / statistics.median(floors), 3),
        "ratio_min": round(min(ours) / min(floors), 3),
        "step_median_ms": {
            step: round(statistics.median(values) * 1000, 3) for step, values in steps.items()
        },
    }


def measure_orchard(iterations: int, cold_runs: int, *, warm_up: bool = True) -> dict[str, Any]:
    """Warm, first and cold round trips of the orchard recipe, strict and relaxed;
    ``warm_up=False`` (a smoke run) skips the unsampled spawn of each cold kind."""
    result: dict[str, Any] = {
        "cwd": "a git checkout (20 committed files, one modified)",
        "recipe": "tests/recipes/orchard_like_mini_cnn.yaml",
    }
    with Sandbox("orchard") as box:
        box.make_checkout()
        recipes = {mode: box.orchard_recipe(mode, strict=mode == "strict") for mode in _MODES}
        cold = _cold(
            box, {mode: str(path) for mode, path in recipes.items()}, cold_runs, warm_up=warm_up
        )
        for mode, recipe in recipes.items():
            cfg = Config.from_recipe(recipe)
            floor = FloorRun(
                yaml.safe_load(recipe.read_text(encoding="utf-8")),
                output_dir=box.root / "floor-outputs",
                lock_path=box.root / "locks" / f"floor-{mode}.lock",
            )
            plain = _warm_pair(cfg, floor, iterations, terminal=False)
            terminal = _warm_pair(cfg, floor, max(3, iterations // 3), terminal=True)
            first = cold[mode]["first_round_trip_ms"]
            result[mode] = {
                "warm": plain,
                "terminal": terminal,
                **cold[mode],
                "first_vs_warm": round(first["median"] / plain["round_trip_ms"]["median"], 2),
            }
    return result


def _cold(
    box: Sandbox, recipes: dict[str, str], runs: int, *, warm_up: bool
) -> dict[str, dict[str, Any]]:
    kinds = {"torch": ("torch",)}
    for mode, path in recipes.items():
        kinds[mode] = ("roundtrip", path)
        kinds[f"floor {mode}"] = ("floor", path)
    # Compile into the sandbox's bytecode cache and warm the page cache, unsampled.
    for args in kinds.values() if warm_up else ():
        spawn_worker(box, *args)
    after_torch: dict[str, list[float]] = {kind: [] for kind in kinds}
    first: dict[str, list[float]] = {mode: [] for mode in recipes}
    for _ in range(runs):
        for kind, args in kinds.items():
            _, report = spawn_worker(box, *args)
            after_torch[kind].append(report["after_torch_s"])
            if kind in first:
                first[kind].append(report["roundtrip_s"])
    torch_only = statistics.median(after_torch["torch"])

    def beyond_torch(kind: str) -> float:
        return round((statistics.median(after_torch[kind]) - torch_only) * 1000, 1)

    return {
        mode: {
            "first_round_trip_ms": summarize(first[mode]),
            "cold_overhead_ms": beyond_torch(mode),
            "floor_cold_overhead_ms": beyond_torch(f"floor {mode}"),
        }
        for mode in recipes
    }
