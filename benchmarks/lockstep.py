"""Two checkouts' warm round trips, taking turns: an A/B that load does not tilt.

``python -m benchmarks.lockstep OLD NEW [-n 200]`` starts one worker process per
checkout (``benchmarks/_lockstep_worker.py`` of this checkout, run with the other's
``PYTHONPATH``), each with its own sandbox holding a small git checkout and the orchard
recipe (relaxed), as the **sacred** section has it. After a warm-up the two take turns,
one round trip each, the order flipped every round, so whatever else the machine does
(other processes, the file system's state) falls on both alike. Per checkout: the mean
CPU per round trip (user, system, git children) and the median wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["lockstep"]

_WORKER = Path(__file__).resolve().with_name("_lockstep_worker.py")


def lockstep(trees: dict[str, Path], rounds: int) -> dict[str, dict[str, float]]:
    """``rounds`` round trips of each checkout in ``trees`` (name -> folder), in turns."""
    workers: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, tree in trees.items():
            workers[name] = subprocess.Popen(
                [sys.executable, str(_WORKER)],
                cwd=tree,
                env={**os.environ, "PYTHONPATH": str(tree)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        for name, worker in workers.items():
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the worker of {name} ({trees[name]}) did not start")
        samples: dict[str, list[tuple[float, ...]]] = {name: [] for name in workers}
        names = list(workers)
        for index in range(rounds):
            for name in names if index % 2 == 0 else names[::-1]:
                worker = workers[name]
                assert worker.stdin is not None and worker.stdout is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
                samples[name].append(tuple(float(v) for v in worker.stdout.readline().split()))
    finally:
        for worker in workers.values():
            if worker.stdin is not None:
                worker.stdin.close()
            worker.wait(timeout=120)
    result: dict[str, dict[str, float]] = {}
    for name, rows in samples.items():
        user, system, spawned = (
            statistics.fmean(row[column] for row in rows) * 1000 for column in range(3)
        )
        result[name] = {
            "user_ms": round(user, 2),
            "system_ms": round(system, 2),
            "git_ms": round(spawned, 2),
            "cpu_ms": round(user + system + spawned, 2),
            "wall_median_ms": round(statistics.median(row[3] for row in rows) * 1000, 2),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lockstep", description=__doc__)
    parser.add_argument("old", type=Path, help="the checkout to compare against")
    parser.add_argument("new", type=Path, help="the checkout under test")
    parser.add_argument("-n", "--rounds", type=int, default=200, help="round trips of each")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    found: dict[str, Any] = lockstep({"old": args.old, "new": args.new}, args.rounds)
    for name, figures in found.items():
        shown = ", ".join(f"{key} {value}" for key, value in figures.items())
        print(f"{name}: {shown}")
    cpu = found["new"]["cpu_ms"] / found["old"]["cpu_ms"]
    print(f"new / old CPU: {cpu:.3f}; load {load:.2f} -> {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
