"""Scale: crowded output directories, concurrent processes, the bare machine.

- ``existing_runs``: round trips into output directories already holding 0, 1,000 and
  10,000 run directories, taken in turn (0, 1k, 10k, 0, ...) so load drifts hit all;
- ``concurrency``: N processes that each import, load the recipe, wait at a barrier,
  then do one round trip with their own lock file into one shared output directory;
  wall time from the release to the end of the last round trip, per run, and the
  median round trip inside the processes (no process exits before all have finished,
  so interpreter shutdowns do not compete with the round trips);
- ``advance``: ``LifecycleMachine`` with steps that do nothing, timed per ``advance()``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Final

from benchmarks._common import Sandbox, python_command, quiet_stderr, summarize
from benchmarks.warm import round_trip
from orchestrator_fsm import Config, LifecycleMachine, RootOrchestrator, read_run
from orchestrator_fsm.layout import JOURNAL_FILE
from orchestrator_fsm.lifecycle.table import table_steps

__all__ = ["measure_advance", "measure_concurrency", "measure_existing_runs", "measure_growth"]

_WARMUP: Final = 2
_FINISH_TIMEOUT_S: Final = 300.0


def _fill(output_dir: Path, count: int) -> None:
    """``count`` empty directories named like run ids of another day."""
    output_dir.mkdir(parents=True)
    for index in range(count):
        (output_dir / f"20200101-000000-old_data-old_model-0a0a0a-{index:05x}").mkdir()


def measure_existing_runs(counts: Sequence[int], iterations: int) -> list[dict[str, Any]]:
    """Round trips into output directories holding ``counts`` existing runs each."""
    with Sandbox("existing") as box, quiet_stderr():
        configs: dict[int, Config] = {}
        for count in counts:
            output_dir = box.root / f"outputs-{count}"
            _fill(output_dir, count)
            configs[count] = Config.from_recipe(
                box.recipe(f"existing-{count}", output_dir=output_dir)
            )
        for _ in range(_WARMUP):
            for cfg in configs.values():
                round_trip(cfg)
        samples: dict[int, list[float]] = {count: [] for count in counts}
        for _ in range(iterations):
            for count, cfg in configs.items():
                samples[count].append(round_trip(cfg)[0])
    baseline = statistics.median(samples[counts[0]])
    return [
        {
            "existing_runs": count,
            "round_trip_ms": summarize(values),
            "vs_first": round(statistics.median(values) / baseline, 3),
        }
        for count, values in samples.items()
    ]


def _worker_failed(worker: subprocess.Popen[str], err: IO[str], what: str) -> RuntimeError:
    worker.kill()
    worker.wait()
    err.seek(0)
    return RuntimeError(
        f"benchmark worker {what} (exit status {worker.returncode}); stderr:\n{err.read()[-4000:]}"
    )


def _one_wave(box: Sandbox, processes: int, output_dir: Path) -> dict[str, Any]:
    workers: list[subprocess.Popen[str]] = []
    errors: list[IO[str]] = []
    try:
        for index in range(processes):
            recipe = box.recipe(f"p{processes}-{index}", output_dir=output_dir)
            err_path = box.root / f"worker-{processes}-{index}.err"
            errors.append(open(err_path, "w+", encoding="utf-8"))  # noqa: SIM115
            workers.append(
                subprocess.Popen(
                    python_command("roundtrip", str(recipe), "--wait"),
                    cwd=box.cwd,
                    env=box.env(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=errors[-1],
                    text=True,
                )
            )
        for worker, err in zip(workers, errors, strict=True):
            assert worker.stdout is not None
            ready = worker.stdout.readline().strip()
            if ready != "ready":
                raise _worker_failed(worker, err, f"said {ready!r} instead of 'ready'")
        released = time.monotonic()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        reports = []
        for worker, err in zip(workers, errors, strict=True):
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if not line.strip():
                raise _worker_failed(worker, err, "failed in its round trip")
            reports.append(json.loads(line))
        # Only now may they exit: shutdowns must not overlap the round trips measured.
        for worker, err in zip(workers, errors, strict=True):
            assert worker.stdin is not None
            worker.stdin.close()
            if worker.wait(timeout=_FINISH_TIMEOUT_S) != 0:
                raise _worker_failed(worker, err, "exited with an error after its round trip")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for err in errors:
            err.close()
    wall = max(report["end"] for report in reports) - released
    return {
        "processes": processes,
        "wall_ms": round(wall * 1000, 1),
        "wall_per_run_ms": round(wall / processes * 1000, 1),
        "round_trip_median_ms": round(
            statistics.median(report["roundtrip_s"] for report in reports) * 1000, 1
        ),
        "round_trip_max_ms": round(max(report["roundtrip_s"] for report in reports) * 1000, 1),
        "step_median_ms": {
            step: round(statistics.median(report["steps"][step] for report in reports) * 1000, 2)
            for step in reports[0]["steps"]
        },
    }


def measure_concurrency(process_counts: Sequence[int]) -> list[dict[str, Any]]:
    """One wave of concurrent round trips per entry of ``process_counts``."""
    with Sandbox("concurrency") as box:
        output_dir = box.root / "outputs"
        return [_one_wave(box, processes, output_dir) for processes in process_counts]


def _noop() -> None:
    return None


def measure_advance(machines: int) -> dict[str, Any]:
    """Per-``advance()`` cost of the bare machine: no-op steps, no listeners.

    Builds ``machines`` machines, then times every ``advance()`` of each from CREATED
    to CLEANED (rank 0 path). Construction is timed separately.
    """
    steps = dict.fromkeys(table_steps(), _noop)
    construct: list[float] = []
    built: list[LifecycleMachine] = []
    for _ in range(machines):
        t0 = time.perf_counter()
        built.append(LifecycleMachine(steps))
        construct.append(time.perf_counter() - t0)
    per_advance: list[float] = []
    for machine in built:
        while not machine.is_terminal:
            t0 = time.perf_counter()
            machine.advance()
            per_advance.append(time.perf_counter() - t0)
    return {
        "machines": machines,
        "advances_per_machine": len(per_advance) // machines,
        "advance_us": summarize(per_advance, scale=1e6),
        "construct_us": summarize(construct, scale=1e6),
    }


def _deciles(samples: Sequence[float], scale: float) -> dict[str, Any]:
    """The first and last tenth of ``samples``, summarized, and their median ratio."""
    tenth = max(1, len(samples) // 10)
    first, last = samples[:tenth], samples[-tenth:]
    return {
        "first_tenth": summarize(first, scale=scale),
        "last_tenth": summarize(last, scale=scale),
        "last_vs_first": round(statistics.median(last) / statistics.median(first), 3),
    }


def measure_growth(metric_calls: int, attempts: int) -> dict[str, Any]:
    """Whether a run's cost per item stays flat as its record grows.

    ``metrics``: ``metric_calls`` ``log_metrics`` calls in one run, each timed; the
    first and the last tenth compared. ``journal``: one run directory resumed
    ``attempts`` times, so its ``lifecycle.jsonl`` grows by one attempt's transitions
    each time (1,000 and more for the default 120); each resumed round trip timed,
    the first and last tenth compared, and ``read_run`` of the grown record timed.
    """
    with Sandbox("growth") as box, quiet_stderr():
        cfg = Config.from_recipe(box.recipe("growth"))
        per_call: list[float] = []
        with RootOrchestrator(cfg) as orch:
            for step in range(metric_calls):
                t0 = time.perf_counter()
                orch.log_metrics({"loss": 1.0 / (step + 1), "acc": step / metric_calls}, step=step)
                per_call.append(time.perf_counter() - t0)
            assert orch.paths is not None
            root = orch.paths.root
        resumed: list[float] = []
        for _ in range(attempts):
            t0 = time.perf_counter()
            with RootOrchestrator(cfg, resume=root, force_resume=True) as orch:
                orch.log_environment_report()
            resumed.append(time.perf_counter() - t0)
        journal_lines = len((root / JOURNAL_FILE).read_text(encoding="utf-8").splitlines())
        reads: list[float] = []
        for _ in range(5):
            t0 = time.perf_counter()
            read_run(root)
            reads.append(time.perf_counter() - t0)
    return {
        "metrics": {"calls": metric_calls, **_deciles(per_call, scale=1e6), "unit": "us"},
        "journal": {
            "attempts": attempts,
            "journal_lines": journal_lines,
            **_deciles(resumed, scale=1000.0),
            "unit": "ms",
            "read_run_ms": summarize(reads),
            "read_run_us_per_line": round(statistics.median(reads) / journal_lines * 1e6, 2),
        },
    }
