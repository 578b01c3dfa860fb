"""Cold start: what a fresh interpreter pays for one round trip beyond ``import torch``.

Three kinds of child process run the same script (``_worker.py``), interleaved: one
that only imports torch, one that also imports orchestrator_fsm, and one that also
loads a recipe and does one round trip. Wall time is measured from outside, spawn to
exit; the children report their own split (import, recipe, round trip) too.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from typing import Any, Final

from benchmarks._common import Sandbox, python_command, summarize

__all__ = ["import_time_top", "measure_cold"]

_TIMEOUT_S: Final = 300.0
_MODES: Final = ("torch", "import", "roundtrip")
_IMPORTTIME_LINE: Final = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def _spawn(box: Sandbox, mode: str, *extra: str) -> tuple[float, dict[str, float]]:
    t0 = time.perf_counter()
    done = subprocess.run(
        python_command(mode, *extra),
        cwd=box.cwd,
        env=box.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"benchmark worker {mode!r} exited with {done.returncode}; stderr:\n"
            f"{done.stderr[-4000:]}"
        )
    inner: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return elapsed, inner


def import_time_top(box: Sandbox, limit: int = 12) -> list[dict[str, Any]]:
    """What ``import orchestrator_fsm`` adds after torch, by top-level package.

    From one ``python -X importtime`` run: the self time of every module imported after
    torch, summed by the first component of its name (``rich``, ``cattrs``, ...);
    largest first, at most ``limit`` entries, in ms.
    """
    command = python_command("import")
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]],
        cwd=box.cwd,
        env=box.env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"-X importtime run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    by_package: dict[str, int] = {}
    after_torch = False
    # Children are printed before their parent, so every line after torch's own
    # top-level line belongs to what the worker imported after torch.
    for line in done.stderr.splitlines():
        match = _IMPORTTIME_LINE.match(line)
        if match is None:
            continue
        self_us, indent, module = int(match.group(1)), len(match.group(3)), match.group(4)
        if not after_torch:
            after_torch = module == "torch" and indent == 1
            continue
        package = module.split(".")[0]
        by_package[package] = by_package.get(package, 0) + self_us
    ranked = sorted(by_package.items(), key=lambda item: item[1], reverse=True)
    return [{"package": name, "self_ms": round(us / 1000, 1)} for name, us in ranked[:limit]]


def measure_cold(runs: int) -> dict[str, Any]:
    """``runs`` interleaved spawns of each mode; medians and the overhead over torch."""
    with Sandbox("cold") as box:
        recipe = box.recipe("cold")
        walls: dict[str, list[float]] = {mode: [] for mode in _MODES}
        inner: dict[str, list[float]] = {}
        _spawn(box, "torch")  # warm the page cache, so the first sample is not an outlier
        for _ in range(runs):
            for mode in _MODES:
                extra = (str(recipe),) if mode == "roundtrip" else ()
                elapsed, report = _spawn(box, mode, *extra)
                walls[mode].append(elapsed)
                if mode == "roundtrip":
                    for key in ("import_torch_s", "import_package_s", "config_s", "roundtrip_s"):
                        inner.setdefault(key, []).append(report[key])
        medians = {mode: statistics.median(values) for mode, values in walls.items()}
        return {
            "runs": runs,
            "cwd": "temporary directory (not a git checkout)",
            "import_torch_ms": summarize(walls["torch"]),
            "import_package_ms": summarize(walls["import"]),
            "round_trip_ms": summarize(walls["roundtrip"]),
            "overhead_ms": round((medians["roundtrip"] - medians["torch"]) * 1000, 1),
            "import_overhead_ms": round((medians["import"] - medians["torch"]) * 1000, 1),
            "inside_round_trip_process_median_ms": {
                key.removesuffix("_s"): round(statistics.median(values) * 1000, 1)
                for key, values in inner.items()
            },
            "top_imports_beyond_torch": import_time_top(box),
        }
