"""A rank that waits to join: ``orchestrator-fsm ARGV`` with every open of one file timed.

Run as a script by :mod:`benchmarks.join`: an audit hook (``sys.addaudithook``, which
sees every ``open()`` the interpreter makes) notes the monotonic time of each open of
the file named by ``BENCH_JOIN_ENTRY`` (the job's entry, which the waiting rank opens
once per poll), and the times go to ``BENCH_JOIN_LOG`` as JSON when the command ends.
Nothing in the package is changed or patched: this counts the polls as coded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def main() -> int:
    entry = os.environ["BENCH_JOIN_ENTRY"]
    log = os.environ["BENCH_JOIN_LOG"]
    times: list[float] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        # The path may be a str, bytes, a path object or (os.open of a descriptor) an int.
        if event == "open" and args and str(args[0]) == entry:
            times.append(time.monotonic())

    sys.addaudithook(hook)
    from orchestrator_fsm.cli.main import main as command

    try:
        return command(sys.argv[1:])
    finally:
        with open(log, "w", encoding="utf-8") as handle:
            json.dump(times, handle)


if __name__ == "__main__":
    sys.exit(main())
