"""Cold start: what a fresh interpreter pays for one round trip beyond ``import torch``.

Child processes run the same script (``_worker.py``), interleaved: one that only
imports torch, one that also imports orchestrator_fsm, one that also loads a recipe
and does one round trip, and the first and last again with a full garbage collection
right after ``import torch``. Wall time is measured from outside, spawn to exit. The
overheads compare how long each process lives after torch is imported (from its own
timestamp to the parent seeing it exit): what comes before, the interpreter start and
torch's import, is the same work in every kind and by far the noisiest part. The
children report their own split (import, recipe, round trip, each step) too. Bytecode
is cached, as on a user's machine, even where ``PYTHONDONTWRITEBYTECODE`` is set.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from typing import Any, Final

from benchmarks._common import Sandbox, python_command, summarize

__all__ = ["import_time_top", "measure_cold", "spawn_worker"]

_TIMEOUT_S: Final = 300.0
_IMPORTTIME_LINE: Final = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")


def _run_worker(box: Sandbox, command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run one worker process in the sandbox; a non-zero exit raises with its stderr."""
    done = subprocess.run(
        command,
        cwd=box.cwd,
        env=box.env(bytecode_cache=True),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"benchmark worker {' '.join(command)!r} exited with {done.returncode}; stderr:\n"
            f"{done.stderr[-4000:]}"
        )
    return done


def spawn_worker(box: Sandbox, *args: str) -> tuple[float, dict[str, Any]]:
    """Run one worker; its wall time and its own report, plus ``exit_s`` (from its last
    statement to the parent seeing it exit: interpreter shutdown) and ``after_torch_s``
    (from torch imported to the parent seeing it exit)."""
    t0 = time.perf_counter()
    done = _run_worker(box, python_command(*args))
    elapsed = time.perf_counter() - t0
    exited_at = time.monotonic()
    inner: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    inner["exit_s"] = exited_at - inner["finished_at"]
    inner["after_torch_s"] = exited_at - inner["torch_done_at"]
    return elapsed, inner


def import_time_top(box: Sandbox, limit: int = 12) -> list[dict[str, Any]]:
    """What ``import orchestrator_fsm`` adds after torch, by top-level package.

    From one ``python -X importtime`` run (with the collection torch leaves owed paid
    first, so that no module's time includes it): the self time of every module
    imported after torch, summed by the first component of its name (``rich``,
    ``cattrs``, ...); largest first, at most ``limit`` entries, in ms.
    """
    command = python_command("import", "--collect")
    done = _run_worker(box, [command[0], "-X", "importtime", *command[1:]])
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


def measure_cold(runs: int, *, warm_up: bool = True) -> dict[str, Any]:
    """``runs`` interleaved spawns of each kind; medians and the overhead over torch.

    Besides the plain kinds, ``torch`` and ``roundtrip`` also run with ``--collect``
    (a full ``gc.collect()`` right after ``import torch``): torch's import leaves a
    full collection owed that whatever allocates next pays, here our import. The
    difference of that pair is our cost with that debt settled on both sides.
    """
    with Sandbox("cold") as box:
        recipe = str(box.recipe("cold"))
        kinds: dict[str, tuple[str, ...]] = {
            "torch": ("torch",),
            "import": ("import",),
            "roundtrip": ("roundtrip", recipe),
            "torch_collected": ("torch", "--collect"),
            "roundtrip_collected": ("roundtrip", recipe, "--collect"),
        }
        walls: dict[str, list[float]] = {kind: [] for kind in kinds}
        after_torch: dict[str, list[float]] = {kind: [] for kind in kinds}
        exits: dict[str, list[float]] = {kind: [] for kind in kinds}
        inner: dict[str, list[float]] = {}
        steps: dict[str, list[float]] = {}
        # Compile every module into the sandbox's bytecode cache and warm the page
        # cache, so that no sample pays for either (a smoke run, ``warm_up=False``, skips it).
        if warm_up:
            spawn_worker(box, "roundtrip", recipe)
        for _ in range(runs):
            for kind, args in kinds.items():
                elapsed, report = spawn_worker(box, *args)
                walls[kind].append(elapsed)
                after_torch[kind].append(report["after_torch_s"])
                exits[kind].append(report["exit_s"])
                if kind == "roundtrip":
                    for key in ("import_torch_s", "import_package_s", "config_s", "roundtrip_s"):
                        inner.setdefault(key, []).append(report[key])
                    for step, seconds in report["steps"].items():
                        steps.setdefault(step, []).append(seconds)
                if kind == "torch_collected":
                    inner.setdefault("gc_collect_after_torch_s", []).append(report["collect_s"])
        # Overheads compare the time each process lives after torch is imported: what
        # comes before (interpreter start, torch's own import) is the same work in
        # every kind, and torch's import time varies by tens of ms from run to run.
        medians = {kind: statistics.median(values) for kind, values in after_torch.items()}
        minimums = {kind: min(values) for kind, values in after_torch.items()}

        def ms(seconds: float) -> float:
            return round(seconds * 1000, 1)

        return {
            "runs": runs,
            "cwd": "temporary directory (not a git checkout)",
            "bytecode": "cached (PYTHONPYCACHEPREFIX in the sandbox, compiled before sampling)",
            "import_torch_ms": summarize(walls["torch"]),
            "import_package_ms": summarize(walls["import"]),
            "round_trip_ms": summarize(walls["roundtrip"]),
            "import_torch_collected_ms": summarize(walls["torch_collected"]),
            "round_trip_collected_ms": summarize(walls["roundtrip_collected"]),
            "after_torch_ms": {kind: summarize(values) for kind, values in after_torch.items()},
            "overhead_ms": ms(medians["roundtrip"] - medians["torch"]),
            "overhead_of_minimums_ms": ms(minimums["roundtrip"] - minimums["torch"]),
            "import_overhead_ms": ms(medians["import"] - medians["torch"]),
            "overhead_collected_ms": ms(
                medians["roundtrip_collected"] - medians["torch_collected"]
            ),
            "inside_round_trip_process_median_ms": {
                key.removesuffix("_s"): ms(statistics.median(values))
                for key, values in inner.items()
            },
            "first_round_trip_step_median_ms": {
                step: round(statistics.median(values) * 1000, 2) for step, values in steps.items()
            },
            "interpreter_exit_median_ms": {
                kind: ms(statistics.median(values)) for kind, values in exits.items()
            },
            "top_imports_beyond_torch": import_time_top(box),
        }
