"""``python -m benchmarks.join``: what joining one run costs the ranks of a job.

Two measurements (also the suite's ``join`` section, ``--only join``):

- **READY lag**: real ``torchrun --standalone --nproc_per_node=N`` launches of
  ``orchestrator-fsm run`` (N = 2, 4, 8, 16 by default), and real
  ``torch.multiprocessing.spawn`` launches of N workers that initialise a gloo process
  group before ``RootOrchestrator`` (:mod:`benchmarks._join_spawn`; the ranks meet
  through the group's store), whose entry logs, on every rank,
  when that rank's machine entered READY, read from its own transition history
  (``orch.machine.history``), with ``log_summary``. Rank 0's READY is read from
  ``lifecycle.jsonl`` (the ``ready`` line's start plus its duration), every other rank's
  from its record (``ranks/rank<N>.json``, its summary). The lag of a rank is its READY
  minus rank 0's; per launch the largest lag is "every rank READY". Each rank's join
  step is split into the time it waited before rank 0 was READY and the time it took
  to notice (its join step's end minus rank 0's READY), the poll's share.
- **Polling cost**: one real waiting rank (``orchestrator-fsm run`` with torchrun's
  variables for rank 1 of 1,000) in front of a job entry whose run is not READY yet,
  until its ``join_timeout_s`` runs out, in three states: no entry yet (rank 0 has not
  made its directory), the entry and a record not yet READY (a first attempt), and the
  same on a restart, with the 999 rank records of the attempt before in ``ranks/``.
  The polls are timed by an audit hook on ``open()`` (:mod:`benchmarks._join_waiter`;
  the package runs unchanged), and ``strace -f -y`` of the same wait counts the system
  calls naming the entry or the run directory, per poll. Operations per second at
  1,000 ranks = 999 waiting ranks x polls per second x operations per poll.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import yaml

from benchmarks._common import Sandbox

__all__ = ["CASES", "format_rows", "measure_join", "measure_polling", "measure_ready_lag"]

DEFAULT_RANKS: Final = (2, 4, 8, 16)
LAUNCH_TIMEOUT_S: Final = 600.0
WAITER: Final = Path(__file__).resolve().with_name("_join_waiter.py")
SPAWNER: Final = Path(__file__).resolve().with_name("_join_spawn.py")
LAUNCHERS: Final = ("torchrun", "mp.spawn")
"""How the READY lag's jobs are launched (see the module)."""
POLLED_RANKS: Final = 1000
"""The job size the polling cost is counted for (one waiting rank stands for 999)."""
CASES: Final = ("no entry", "entry, not ready", "restart, old rank records")
"""The states a waiting rank's polling is counted in (see the module)."""
_STEADY_AFTER_S: Final = 1.5
"""Polls after this long are the steady schedule (the first ones come faster)."""

ENTRY: Final = textwrap.dedent(
    '''
    def ready(orch):
        """Log when this rank entered READY and how its join step went (rank N > 0)."""
        history = orch.machine.history
        ready = next(item for item in history if item.ok and item.dest.value == "ready")
        summary = {"ready_at": ready.started_at.timestamp() + ready.duration_s}
        for item in history:
            if item.step == "join":
                summary["join_started_at"] = item.started_at.timestamp()
                summary["join_s"] = item.duration_s
        orch.log_summary(summary)
    '''
)

# Syscalls that never leave the client (terminal probe, file offset): not counted as
# operations on the shared file system.
_LOCAL_CALLS: Final = frozenset({"ioctl", "lseek"})
_CALL: Final = re.compile(r"^(?:\[pid\s+)?\d*\]?\s*(\w+)\(")


def _launcher_free_env(sandbox: Sandbox) -> dict[str, str]:
    from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS

    dropped = {*LAUNCHER_ENV_VARS, "MASTER_ADDR", "MASTER_PORT", "GROUP_WORLD_SIZE"}
    env = {k: v for k, v in sandbox.env(bytecode_cache=True).items() if k not in dropped}
    env["OMP_NUM_THREADS"] = "1"
    # torchrun leaves its log folder (torchelastic_*) in the temporary directory.
    scratch = sandbox.root / "tmp"
    scratch.mkdir(exist_ok=True)
    env["TMPDIR"] = str(scratch)
    return env


def _recipe(sandbox: Sandbox, name: str, **infrastructure: Any) -> Path:
    path = sandbox.recipe(name)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["infrastructure"].update(infrastructure)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _ready_of_rank0(root: Path) -> float:
    for line in (root / "lifecycle.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        if item.get("dest") == "ready" and item.get("ok"):
            started = datetime.fromisoformat(item["started_at"]).timestamp()
            return float(started + item["duration_s"])
    raise ValueError(f"{root}/lifecycle.jsonl has no READY line")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _one_launch(sandbox: Sandbox, recipe: Path, ranks: int, launcher: str) -> dict[str, Any]:
    """One launch of ``ranks`` ranks by ``launcher`` (``torchrun`` or ``mp.spawn``); the
    lags read back from its run."""
    from orchestrator_fsm.lifecycle.record import read_run

    output = Path(yaml.safe_load(recipe.read_text())["telemetry"]["output_dir"])
    before = set(output.iterdir()) if output.exists() else set()
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += [f"--nproc_per_node={ranks}", "-m", "orchestrator_fsm", "run", str(recipe)]
        command += ["--entry", "join_entry.py:ready"]
    else:
        command = [sys.executable, str(SPAWNER), str(recipe), str(ranks), str(_free_port())]
    done = subprocess.run(
        command,
        cwd=sandbox.cwd,
        env=_launcher_free_env(sandbox),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{launcher} of {ranks} ranks exited {done.returncode}:\n{done.stderr}")
    (root,) = [p for p in output.iterdir() if p not in before and not p.name.startswith(".")]
    run = read_run(root)
    rank0 = _ready_of_rank0(root)
    lags, noticed, waited = [], [], []
    for rank in run.ranks:
        lags.append(rank.summary["ready_at"] - rank0)
        join_end = rank.summary["join_started_at"] + rank.summary["join_s"]
        # Waiting for rank 0 (not a cost of the index) vs. noticing that it was READY.
        waited.append(max(0.0, rank0 - rank.summary["join_started_at"]))
        noticed.append(max(0.0, join_end - max(rank0, rank.summary["join_started_at"])))
    if len(lags) != ranks - 1:
        raise RuntimeError(f"{root}: {len(lags)} rank records, expected {ranks - 1}")
    return {
        "root": str(root),
        "all_ready_s": max(lags),
        "median_lag_s": statistics.median(lags),
        "joined_before_rank0_ready": sum(1 for value in waited if value > 0),
        "notice_median_s": statistics.median(noticed),
        "notice_max_s": max(noticed),
    }


def measure_ready_lag(
    ranks: Sequence[int] = DEFAULT_RANKS,
    repeats: int = 3,
    keep: Path | None = None,
    launcher: str = "torchrun",
) -> dict[str, Any]:
    """READY lag under ``launcher`` (``torchrun`` or ``mp.spawn``) for each count in
    ``ranks``, ``repeats`` launches each (interleaved). ``keep``: copy the first run
    directory there (the polling measurement's template)."""
    results: dict[str, list[dict[str, Any]]] = {str(n): [] for n in ranks}
    with Sandbox("join") as sandbox:
        (sandbox.cwd / "join_entry.py").write_text(ENTRY, encoding="utf-8")
        for _ in range(repeats):
            for n in ranks:
                recipe = _recipe(sandbox, f"join{n}", join_timeout_s=LAUNCH_TIMEOUT_S)
                results[str(n)].append(_one_launch(sandbox, recipe, n, launcher))
        if keep is not None:
            template = next(
                (Path(item["root"]) for items in results.values() for item in items), None
            )
            if template is not None:
                shutil.copytree(template, keep)
    summary: dict[str, Any] = {}
    for n, launches in results.items():
        summary[n] = {
            "launches": len(launches),
            "all_ready_s": _spread([item["all_ready_s"] for item in launches]),
            "median_lag_s": _spread([item["median_lag_s"] for item in launches]),
            "notice_median_s": _spread([item["notice_median_s"] for item in launches]),
            "notice_max_s": _spread([item["notice_max_s"] for item in launches]),
            "ranks_waiting_at_rank0_ready": [
                item["joined_before_rank0_ready"] for item in launches
            ],
        }
    return summary


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def _state(
    template: Path, output: Path, case: str, recipe: Path, world: int
) -> tuple[Path, Path, dict[str, str]]:
    """Lay out ``output`` as rank 0 leaves it while not yet READY, for ``case``
    (``no entry``, ``entry, not ready``, ``restart, old rank records``); the entry's
    path, the run directory and the waiting rank's launcher variables."""
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.distributed import Launch
    from orchestrator_fsm.layout import job_entry_file
    from orchestrator_fsm.lifecycle.job_index import JobEntry, job_key, write_job_entry

    restart = 1 if case.startswith("restart") else 0
    per_node = 8
    launch = Launch(
        launcher="torchrun",
        rank=1,
        local_rank=1,
        world_size=world,
        local_world_size=per_node,
        job_id="bench-join",
        restart_count=restart,
    )
    config_hash = Config.from_recipe(recipe).config_hash()
    key = job_key(launch, config_hash)
    assert key is not None
    root = output / template.name
    shutil.copytree(template, root)
    record = json.loads((root / "run.json").read_text(encoding="utf-8"))
    attempts = record.get("attempts") or [{}]
    if restart:
        attempts = [*attempts, {**attempts[-1], "number": 2, "restart_count": 1}]
    for attempt in attempts[-1:]:
        attempt.update(status="running", ended_at=None)
    record.update(
        state="guarded",
        status="running",
        ended_at=None,
        world_size=world,
        restart_count=restart,
        attempts=attempts,
        config_hash=config_hash,
    )
    (root / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    ranks_dir = root / "ranks"
    old = json.loads(next(ranks_dir.glob("rank*.json")).read_text(encoding="utf-8"))
    shutil.rmtree(ranks_dir)
    ranks_dir.mkdir()
    if restart:
        for rank in range(1, world):
            text = json.dumps({**old, "rank": rank, "restart_count": 0}, indent=2)
            (ranks_dir / f"rank{rank}.json").write_text(text)
    entry_path = job_entry_file(output, key)
    if case != "no entry":
        write_job_entry(
            output,
            JobEntry(
                job=key,
                restart_count=restart,
                written_at=datetime.now(timezone.utc),
                root=root,
                run_id=record.get("run_id"),
                attempt=len(attempts),
                config_hash=config_hash,
            ),
        )
    variables = {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(per_node),
        "GROUP_RANK": "0",
        "GROUP_WORLD_SIZE": str(world // per_node),
        "TORCHELASTIC_RUN_ID": "bench-join",
        "TORCHELASTIC_RESTART_COUNT": str(restart),
    }
    return entry_path, root, variables


def _wait_once(
    sandbox: Sandbox,
    recipe: Path,
    entry_path: Path,
    variables: Mapping[str, str],
    strace: Path | None,
    seconds: float,
) -> list[float]:
    """Run one waiting rank until its join times out; the monotonic times of its
    polls (opens of the entry). Under ``strace`` (its output file) when given."""
    log = sandbox.root / "poll-times.json"
    env = {**_launcher_free_env(sandbox), **variables}
    env.update(BENCH_JOIN_ENTRY=str(entry_path), BENCH_JOIN_LOG=str(log))
    command = [sys.executable, str(WAITER), "run", str(recipe)]
    command += ["--entry", "join_entry.py:ready"]
    if strace is not None:
        # Only the calls on files and descriptors stop the process (seccomp filter).
        tracing = ["strace", "-f", "-qq", "-y", "--seccomp-bpf", "-e", "trace=%file,%desc"]
        command = [*tracing, "-o", str(strace), *command]
    done = subprocess.run(
        command,
        cwd=sandbox.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + LAUNCH_TIMEOUT_S,
        check=False,
    )
    if not log.exists():
        raise RuntimeError(f"the waiting rank exited {done.returncode}:\n{done.stderr[-3000:]}")
    times: list[float] = json.loads(log.read_text(encoding="utf-8"))
    return times


def _count_calls(trace: Path, watched: Sequence[str]) -> Counter[str]:
    """System calls in ``trace`` (``strace -f -y`` output) naming a path under one of
    ``watched`` (as an argument or as a file descriptor's path)."""
    counts: Counter[str] = Counter()
    for line in trace.read_text(encoding="utf-8", errors="replace").splitlines():
        if "resumed>" in line or not any(path in line for path in watched):
            continue
        match = _CALL.match(line.strip())
        if match:
            counts[match.group(1)] += 1
    return counts


def measure_polling(
    template: Path,
    seconds: float = 8.0,
    world: int = POLLED_RANKS,
    cases: Sequence[str] = CASES,
) -> dict[str, Any]:
    """The polling cost of one waiting rank of a ``world``-rank job, in each of
    ``cases`` (see the module); ``template`` is a finished run directory of several
    ranks to lay them out from. The operation counts need ``strace`` (left out
    without it)."""
    with_strace = shutil.which("strace") is not None
    results: dict[str, Any] = {"world_size": world, "wait_s": seconds, "strace": with_strace}
    for case in cases:
        with Sandbox("poll") as sandbox:
            (sandbox.cwd / "join_entry.py").write_text(ENTRY, encoding="utf-8")
            recipe = _recipe(sandbox, "poll", join_timeout_s=seconds)
            output = sandbox.root / "outputs"
            output.mkdir()
            entry_path, root, variables = _state(template, output, case, recipe, world)
            times = _wait_once(sandbox, recipe, entry_path, variables, None, seconds)
            if len(times) < 3:
                raise RuntimeError(f"{case}: the waiting rank polled {len(times)} times")
            first_second = sum(1 for t in times if t - times[0] < 1.0)
            # The gaps of the steady schedule; the last poll is left out, since the sleep
            # before it is cut short by the deadline.
            steady = _gaps([t for t in times[:-1] if t - times[0] >= _STEADY_AFTER_S])
            interval = statistics.median(steady) if steady else None
            rate = None if interval is None else 1.0 / interval
            item: dict[str, Any] = {
                "polls": len(times),
                "polls_first_second": first_second,
                "steady_polls_per_s": None if rate is None else round(rate, 3),
                "steady_interval_s": None if interval is None else round(interval, 4),
            }
            if with_strace:
                trace = sandbox.root / "strace.txt"
                traced = _wait_once(sandbox, recipe, entry_path, variables, trace, seconds)
                counts = _count_calls(trace, [str(entry_path.parent), str(root)])
                polls = max(1, len(traced))
                per_poll = {name: round(count / polls, 2) for name, count in sorted(counts.items())}
                ops = sum(count for name, count in counts.items() if name not in _LOCAL_CALLS)
                item["traced_polls"] = len(traced)
                item["syscalls_per_poll"] = per_poll
                item["fs_ops_per_poll"] = round(ops / polls, 2)
                if rate is not None:
                    item["fs_ops_per_s_one_rank"] = round(ops / polls * rate, 1)
                    item[f"fs_ops_per_s_{world}_ranks"] = round(ops / polls * rate * (world - 1))
                    item[f"fs_ops_first_second_{world}_ranks"] = round(
                        ops / polls * first_second * (world - 1)
                    )
            results[case] = item
    return results


def _gaps(times: Sequence[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def measure_join(
    ranks: Sequence[int] = DEFAULT_RANKS,
    repeats: int = 3,
    wait_s: float = 8.0,
    cases: Sequence[str] = CASES,
    launchers: Sequence[str] = LAUNCHERS,
) -> dict[str, Any]:
    """Both measurements: the READY lag (``ready_lag`` under torchrun,
    ``ready_lag_spawn`` under ``mp.spawn``, each if in ``launchers``), then the polling
    cost (laid out from a torchrun run of the first count, which must be at least 2)."""
    if not ranks or min(ranks) < 2:
        raise ValueError(f"every rank count must be at least 2, got {list(ranks)}")
    scratch = Path(tempfile.mkdtemp(prefix="orchestrator-fsm-bench-template-"))
    results: dict[str, Any] = {}
    try:
        template = scratch / "run"
        if "torchrun" in launchers:
            results["ready_lag"] = measure_ready_lag(ranks, repeats, keep=template)
        if "mp.spawn" in launchers:
            keep = None if template.exists() else template
            results["ready_lag_spawn"] = measure_ready_lag(ranks, repeats, keep, "mp.spawn")
        results["polling"] = measure_polling(template, wait_s, cases=cases)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def format_rows(join: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(measurement, value)`` rows of :func:`measure_join`'s result."""
    rows: list[tuple[str, str]] = []
    lags = [("torchrun", join.get("ready_lag", {})), ("mp.spawn", join.get("ready_lag_spawn", {}))]
    for launcher, n, item in ((name, n, item) for name, by_n in lags for n, item in by_n.items()):
        spread = item["all_ready_s"]
        notice = item["notice_max_s"]
        rows.append(
            (
                f"{launcher} {n} ranks: rank 0 READY -> every rank READY",
                f"median {spread['median'] * 1000:.0f} ms (min {spread['min'] * 1000:.0f}, "
                f"max {spread['max'] * 1000:.0f}; n={item['launches']}); noticing rank 0 "
                f"READY took at most {notice['median'] * 1000:.0f} ms (median launch); "
                f"ranks already waiting: {item['ranks_waiting_at_rank0_ready']}",
            )
        )
    polling = join.get("polling", {})
    world = polling.get("world_size", POLLED_RANKS)
    for case in CASES:
        item = polling.get(case)
        if item is None:
            continue
        text = (
            f"{item['polls_first_second']} polls in the first second, then "
            f"{item['steady_polls_per_s']}/s"
        )
        if "fs_ops_per_poll" in item:
            calls = ", ".join(f"{k} {v}" for k, v in item["syscalls_per_poll"].items())
            text += f"; {item['fs_ops_per_poll']} fs ops per poll ({calls})"
        steady = item.get(f"fs_ops_per_s_{world}_ranks")
        if steady is not None:
            text += (
                f"; {world} ranks: {steady:,} ops/s steady, "
                f"{item[f'fs_ops_first_second_{world}_ranks']:,} in the first second"
            )
        rows.append((f"a waiting rank, {case}", text))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.join", description=__doc__)
    parser.add_argument("--ranks", default="2,4,8,16", help="rank counts (default 2,4,8,16)")
    parser.add_argument("--repeats", type=int, default=3, help="launches per count (3)")
    parser.add_argument("--wait", type=float, default=8.0, help="seconds a waiting rank polls")
    parser.add_argument(
        "--case", action="append", choices=CASES, help="polling states to count (default all)"
    )
    parser.add_argument(
        "--launcher", action="append", choices=LAUNCHERS, help="READY lag under (default both)"
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    ranks = [int(part) for part in args.ranks.split(",") if part.strip()]
    cases = tuple(args.case or CASES)
    results = measure_join(ranks, args.repeats, args.wait, cases, tuple(args.launcher or LAUNCHERS))
    for name, value in format_rows(results):
        print(f"{name}: {value}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
