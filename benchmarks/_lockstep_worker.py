"""One side of ``python -m benchmarks.lockstep``: warm round trips of the package on
``PYTHONPATH``, one per ``go`` line on stdin, each answered by a line of its CPU and
wall seconds. Run by path with the checkout under test as working directory and
``PYTHONPATH``, so ``benchmarks`` and ``orchestrator_fsm`` are that checkout's."""

from __future__ import annotations

import os
import resource
import sys
import time

from benchmarks._common import Sandbox, quiet_stderr
from benchmarks.warm import round_trip
from orchestrator_fsm import Config

_WARMUP = 5


def main() -> None:
    # The answers go to a copy of stdout: quiet_stderr and the runs' own capture of the
    # standard streams must not mix with them.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    with Sandbox("lockstep") as box, quiet_stderr():
        box.make_checkout()
        cfg = Config.from_recipe(box.orchard_recipe("lockstep", strict=False))
        for _ in range(_WARMUP):
            round_trip(cfg)
        answers.write("ready\n")
        for line in sys.stdin:
            if line.strip() != "go":
                break
            own = resource.getrusage(resource.RUSAGE_SELF)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            round_trip(cfg)
            wall = time.perf_counter() - t0
            own_after = resource.getrusage(resource.RUSAGE_SELF)
            children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            user = own_after.ru_utime - own.ru_utime
            system = own_after.ru_stime - own.ru_stime
            spawned = (
                children_after.ru_utime
                + children_after.ru_stime
                - children.ru_utime
                - children.ru_stime
            )
            answers.write(f"{user} {system} {spawned} {wall}\n")


if __name__ == "__main__":
    main()
