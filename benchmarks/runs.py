"""How long ``orchestrator-fsm runs`` takes over a crowded output directory.

``python -m benchmarks.runs [--runs N] [--repeats K]`` (from the repository root) makes
``N`` (default 10,000) run directories in a :class:`~benchmarks._common.Sandbox`, each
with a ``run.json`` written from a :class:`~orchestrator_fsm.lifecycle.record.RunRecord`
exactly as the recorder writes it (plus a journal, ``logs/`` and ``reports/``, which
the listing must not read), in a mix of statuses: completed, failed, interrupted,
refused, and ``running`` records whose process is gone (listed as crashed, after a
pid probe). Then, ``K`` times each, it times:

- ``list_runs`` in this process (find, read, infer status, sort), with and without a
  ``--status`` filter, and laying the table (plain, and printed by rich as on a
  terminal) and the JSON out;
- the command itself in a fresh interpreter, ``runs DIR`` and ``runs DIR --json``
  (output to /dev/null), interleaved with ``--version``: the difference is what
  listing costs beyond starting the command.

Figures are milliseconds (min / median / p90 / max). Not a test: nothing fails on a
slow number.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

from benchmarks._common import Sandbox, summarize
from orchestrator_fsm.cli.runs import (
    RunFilter,
    format_runs_json,
    format_runs_table,
    list_runs,
)
from orchestrator_fsm.lifecycle.record import Attempt, ErrorSummary, LastMetric, RunRecord
from orchestrator_fsm.lifecycle.record_files import record_text

__all__ = ["main", "make_run_dirs", "measure_runs"]

_STATUSES: Final = ("completed",) * 14 + ("failed",) * 3 + ("interrupted", "refused", "running")
# Above Linux's largest pid_max (2**22): no process has these pids, so such a
# "running" record is crashed, found by the same probe a real dead run gets.
_GONE_PID: Final = 2**22 + 1
_JOURNAL_LINE: Final = (
    '{"attempt": 1, "dest": "seeded", "duration_s": 0.001, "error": null, "ok": true, '
    '"pid": 1, "source": "created", "started_at": "2026-01-01T00:00:00+00:00", '
    '"step": "set_seed"}\n'
)


def _record(index: int, root: Path, start: datetime) -> RunRecord:
    status = _STATUSES[index % len(_STATUSES)]
    started = start + timedelta(minutes=7 * index)
    ended = None if status == "running" else started + timedelta(seconds=30 + index % 600)
    error = None
    if status in ("failed", "refused"):
        kind = "LockContendedError" if status == "refused" else "RuntimeError"
        error = ErrorSummary(kind, f"synthetic failure {index}", "pipeline")
    host = socket.gethostname()
    return RunRecord(
        run_id=root.name,
        root=root,
        status=status,
        state="cleaned" if status == "completed" else "failed",
        started_at=started,
        ended_at=ended,
        rank=0,
        world_size=1,
        pid=_GONE_PID + index,
        host=host,
        heartbeat_at=ended or started,
        heartbeat_s=30.0,
        device="cpu",
        error=error,
        phases={"set_seed": 0.001, "acquire_lock": 0.0004, "write_manifest": 0.02},
        elapsed_s=None if ended is None else (ended - started).total_seconds(),
        argv=("orchestrator-fsm", "run", "recipe.yaml", "--entry", "pipeline.py:train"),
        cwd="/work",
        entry_point="/usr/bin/orchestrator-fsm",
        python="3.11.7",
        package_version="0.1.0",
        config_hash=f"{index:064x}",
        attempts=(Attempt(1, started_at=started, ended_at=ended, status=status, pid=1, host=host),),
        metrics={"loss": LastMetric(1.0 / (index + 1), 100), "acc": LastMetric(0.9, 100)},
        summary={"final_acc": 0.9, "final_loss": 0.1} if status == "completed" else {},
    )


def make_run_dirs(output_dir: Path, count: int) -> None:
    """``count`` run directories under ``output_dir``, as described in the module doc."""
    output_dir.mkdir(parents=True, exist_ok=True)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for index in range(count):
        root = output_dir / f"{start + timedelta(minutes=7 * index):%Y%m%d-%H%M%S}-d-m-{index:06x}"
        (root / "logs").mkdir(parents=True)
        (root / "reports").mkdir()
        # Plain writes: this is the benchmark's set-up, not a run's record.
        (root / "run.json").write_text(record_text(_record(index, root, start)), "utf-8")
        (root / "lifecycle.jsonl").write_text(_JOURNAL_LINE * 10, "utf-8")
    (output_dir / ".jobs").mkdir(exist_ok=True)


def _timed(work: Callable[[], object], repeats: int) -> list[float]:
    figures = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        figures.append(time.perf_counter() - t0)
    return figures


def _command(box: Sandbox, *argv: str) -> Callable[[], object]:
    env = box.env(bytecode_cache=True)

    def run() -> None:
        subprocess.run(
            [sys.executable, "-m", "orchestrator_fsm", *argv],
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )

    return run


def measure_runs(count: int, repeats: int) -> dict[str, Any]:
    """The figures described in the module doc, as one JSON-able dict."""
    from rich.console import Console

    with Sandbox("runs") as box:
        outputs = box.root / "outputs"
        t0 = time.perf_counter()
        make_run_dirs(outputs, count)
        made_s = time.perf_counter() - t0
        listed, skipped = list_runs(outputs)  # warms the page cache, checks the set-up
        assert len(listed) == count and not skipped, (len(listed), skipped)
        statuses: dict[str, int] = {}
        for run in listed:
            statuses[run.status] = statuses.get(run.status, 0) + 1
        sink = Console(file=io.StringIO(), width=250)
        failed_only = RunFilter(statuses=frozenset({"failed"}))
        figures = {
            "list_runs": _timed(lambda: list_runs(outputs), repeats),
            "list_runs --status failed": _timed(lambda: list_runs(outputs, failed_only), repeats),
            "table layout (plain, as off a terminal)": _timed(
                lambda: format_runs_table(listed).plain, repeats
            ),
            "table layout and rich print (a terminal)": _timed(
                lambda: sink.print(format_runs_table(listed), soft_wrap=True), repeats
            ),
            "json layout": _timed(lambda: format_runs_json(listed), repeats),
        }
        _command(box, "--version")()  # fills the bytecode cache, unsampled
        commands = {
            "command: --version": _command(box, "--version"),
            "command: runs DIR": _command(box, "runs", str(outputs)),
            "command: runs DIR --json": _command(box, "runs", str(outputs), "--json"),
        }
        # Interleaved, so a load that comes and goes (a shared machine) hits all alike.
        for label in commands:
            figures[label] = []
        for _ in range(repeats):
            for label, run in commands.items():
                figures[label] += _timed(run, 1)
    result: dict[str, Any] = {
        "runs": count,
        "repeats": repeats,
        "statuses": dict(sorted(statuses.items())),
        "setup_s": round(made_s, 2),
        "cpus": os.cpu_count(),
        "ms": {label: summarize(values) for label, values in figures.items()},
    }
    ms = result["ms"]
    result["listing_beyond_startup_ms"] = {
        kind: round(ms["command: runs DIR"][kind] - ms["command: --version"][kind], 1)
        for kind in ("min", "median")
    }
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runs", description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000, help="run directories (10000)")
    parser.add_argument("--repeats", type=int, default=5, help="timings of each kind (5)")
    args = parser.parse_args(argv)
    print(json.dumps(measure_runs(max(1, args.runs), max(1, args.repeats)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
