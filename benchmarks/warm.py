"""Warm round trips in this process: ours, the hand-written floor, and their parts.

A round trip is ``RootOrchestrator(cfg)``, ``__enter__``, ``log_environment_report()``
and ``__exit__``: construction and the whole lifecycle of one run. Ours and the floor
alternate, so that whatever else the machine is doing slows both alike.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import yaml

from benchmarks._common import REPO_ROOT, Sandbox, quiet_stderr, summarize
from benchmarks.floor import FloorRun, floor_round_trip
from orchestrator_fsm import AuditSaver, Config, Logger, RootOrchestrator, RunPaths
from orchestrator_fsm._process import LoggerSnapshot
from orchestrator_fsm.phases.report import build_environment_report, render_report_lines

__all__ = ["measure_warm"]

_WARMUP = 3


def round_trip(cfg: Config) -> tuple[float, dict[str, float]]:
    """One round trip: its wall time and the seconds each step took (by step name)."""
    t0 = time.perf_counter()
    with RootOrchestrator(cfg) as orch:
        orch.log_environment_report()
    elapsed = time.perf_counter() - t0
    steps: dict[str, float] = defaultdict(float)
    for record in orch.machine.history:
        steps[record.step] += record.duration_s
    return elapsed, dict(steps)


def _timed(work: Callable[[], object], repeat: int) -> dict[str, float | int]:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        work()
        samples.append(time.perf_counter() - t0)
    return summarize(samples)


def _components(cfg: Config, box: Sandbox, repeat: int) -> dict[str, Any]:
    """The costly parts of the manifest and report steps, each alone."""
    saver = AuditSaver()
    scratch = RunPaths.create(box.root / "components", "bench", "parts", cfg.config_hash())
    reports = scratch.reports
    report = build_environment_report(cfg, scratch, "cpu", 1, 0)
    # A logger set up like the run's (console + run.log), outside the timing: the part
    # measured is rendering and writing the report's lines, as the report step does.
    log_before = LoggerSnapshot.capture("orchestrator_fsm_bench.report")
    log = Logger.setup("orchestrator_fsm_bench.report", scratch.logs, "INFO")

    def log_report_lines() -> None:
        for line in render_report_lines(report):
            log.info("%s", line)

    parts: dict[str, Callable[[], object]] = {
        "save_config": lambda: saver.save_config(cfg, reports / "config.yaml"),
        "dump_requirements": lambda: saver.dump_requirements(reports / "requirements.txt"),
        "dump_git_info_outside_checkout": lambda: saver.dump_git_info(reports / "git_info.txt"),
        "build_environment_report": lambda: build_environment_report(cfg, scratch, "cpu", 1, 0),
        "log_report_lines": log_report_lines,
    }
    try:
        result: dict[str, Any] = {name: _timed(work, repeat) for name, work in parts.items()}
    finally:
        log_before.restore()
    # Measured explicitly in a checkout (this repository): the git subprocesses a run
    # started from a clone pays, which the sandboxed round trips above do not.
    here = os.getcwd()
    os.chdir(REPO_ROOT)
    try:
        result["dump_git_info_in_checkout"] = _timed(
            lambda: saver.dump_git_info(reports / "git_info.txt"), repeat
        )
    finally:
        os.chdir(here)
    return result


def _step_medians(per_step: dict[str, list[float]]) -> dict[str, float]:
    return {step: round(statistics.median(values) * 1000, 3) for step, values in per_step.items()}


def _on_a_terminal(cfg: Config, iterations: int) -> dict[str, Any]:
    """Round trips whose console log handler believes stderr is a terminal (rich)."""
    with quiet_stderr(as_terminal=True):
        round_trip(cfg)
        samples: list[float] = []
        per_step: dict[str, list[float]] = defaultdict(list)
        for _ in range(iterations):
            elapsed, steps = round_trip(cfg)
            samples.append(elapsed)
            for step, seconds in steps.items():
                per_step[step].append(seconds)
    medians = _step_medians(per_step)
    return {
        "round_trip_ms": summarize(samples),
        "report_step_median_ms": medians["report"],
        "init_logging_step_median_ms": medians["init_logging"],
    }


def measure_warm(iterations: int, *, with_ours: bool, with_floor: bool) -> dict[str, Any]:
    """Run ``iterations`` round trips of ours and/or the floor, interleaved.

    Returns ``{"warm": {...}}`` and/or ``{"floor": {...}}``; the floor's entry carries
    the ratio ours / floor when both ran.
    """
    with Sandbox("warm") as box, quiet_stderr():
        recipe = box.recipe("warm")
        cfg = Config.from_recipe(recipe)
        floor = FloorRun(
            yaml.safe_load(recipe.read_text(encoding="utf-8")),
            output_dir=box.root / "floor-outputs",
            lock_path=box.root / "locks" / "floor.lock",
        )
        for _ in range(_WARMUP):
            if with_ours:
                round_trip(cfg)
            if with_floor:
                floor_round_trip(floor)

        ours: list[float] = []
        floors: list[float] = []
        per_step: dict[str, list[float]] = defaultdict(list)
        unaccounted: list[float] = []
        for _ in range(iterations):
            if with_ours:
                elapsed, steps = round_trip(cfg)
                ours.append(elapsed)
                for step, seconds in steps.items():
                    per_step[step].append(seconds)
                unaccounted.append(elapsed - sum(steps.values()))
            if with_floor:
                t0 = time.perf_counter()
                floor_round_trip(floor)
                floors.append(time.perf_counter() - t0)

        result: dict[str, Any] = {}
        if with_ours:
            result["warm"] = {
                "cwd": "temporary directory (not a git checkout)",
                "console": "stderr is not a terminal (plain log lines, as in batch jobs)",
                "round_trip_ms": summarize(ours),
                "step_median_ms": _step_medians(per_step),
                "outside_steps_median_ms": round(statistics.median(unaccounted) * 1000, 3),
                "components_ms": _components(cfg, box, max(3, min(iterations, 20))),
                "terminal": _on_a_terminal(cfg, max(3, iterations // 3)),
            }
        if with_floor:
            result["floor"] = {"round_trip_ms": summarize(floors)}
            if with_ours:
                result["floor"]["ratio_median"] = round(
                    statistics.median(ours) / statistics.median(floors), 3
                )
                result["floor"]["ratio_min"] = round(min(ours) / min(floors), 3)
    return result
