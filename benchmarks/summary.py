"""Where the numbers were taken, how they compare with the targets, and how they print."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import torch
from rich.console import Console
from rich.table import Table

from benchmarks._common import REPO_ROOT
from orchestrator_fsm._fs import atomic_write_json
from orchestrator_fsm._system import available_cpu_count

__all__ = [
    "collect_meta",
    "evaluate_targets",
    "load_average",
    "print_results",
    "render_markdown",
    "result_rows",
    "write_json",
]

WARM_VS_FLOOR_MAX: Final = 1.5
COLD_OVERHEAD_MAX_MS: Final = 50.0
CROWDED_DIR_MAX_RATIO: Final = 1.10
ADVANCE_MAX_US: Final = 50.0
GROWTH_MAX_RATIO: Final = 1.25
ORCHARD_WARM_MAX: Final = 1.2
ORCHARD_TERMINAL_MAX: Final = 1.5
ORCHARD_FIRST_MAX: Final = 2.0
ORCHARD_COLD_MAX_MS: Final = 60.0
SACRED_MAX_RATIO: Final = 1.0


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, where the OS has them."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def collect_meta(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Date, commit, machine and software the measurement ran on."""
    changed = _git("diff", "--name-only", "HEAD")  # tracked files differing from HEAD
    dirty_files = sorted(line for line in (changed or "").splitlines() if line)
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "tree_dirty": None if changed is None else bool(dirty_files),
        "dirty_files": dirty_files,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": available_cpu_count(),
        "load_average_before": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "quick": bool(settings.get("quick")),
    }


def _target(text: str, measured: float, limit: float, unit: str) -> dict[str, Any]:
    return {
        "target": text,
        "limit": limit,
        "measured": measured,
        "unit": unit,
        "met": measured <= limit,
    }


def evaluate_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each target the measured sections allow judging, with the number and a verdict."""
    targets: list[dict[str, Any]] = []
    floor = results.get("floor", {})
    if "ratio_median" in floor:
        targets.append(
            _target(
                f"warm round trip <= {WARM_VS_FLOOR_MAX}x the floor (median ratio)",
                floor["ratio_median"],
                WARM_VS_FLOOR_MAX,
                "x",
            )
        )
    cold = results.get("cold_start")
    if cold:
        targets.append(
            _target(
                f"cold overhead beyond import torch <= {COLD_OVERHEAD_MAX_MS:.0f} ms",
                cold["overhead_ms"],
                COLD_OVERHEAD_MAX_MS,
                "ms",
            )
        )
    cli = results.get("cli_startup")
    if cli:
        target = _target(
            f"every quick command <= {cli['target_ms']:.0f} ms spawn to exit (median), "
            "none importing torch",
            cli["slowest_median_ms"],
            cli["target_ms"],
            "ms",
        )
        target["met"] = cli["met"]  # a fast command that imported torch still misses
        targets.append(target)
    scale = results.get("scale", {})
    existing = scale.get("existing_runs") or []
    if len(existing) > 1:
        first = existing[0]
        crowded = max(existing, key=lambda entry: entry["existing_runs"])
        targets.append(
            _target(
                f"round trip with {crowded['existing_runs']:,} existing runs within "
                f"{(CROWDED_DIR_MAX_RATIO - 1) * 100:.0f} % of {first['existing_runs']:,}",
                crowded["vs_first"],
                CROWDED_DIR_MAX_RATIO,
                "x",
            )
        )
    advance = scale.get("advance")
    if advance:
        targets.append(
            _target(
                f"no-op advance() <= {ADVANCE_MAX_US:.0f} us (median)",
                advance["advance_us"]["median"],
                ADVANCE_MAX_US,
                "us",
            )
        )
    growth = scale.get("growth")
    if growth:
        targets.append(
            _target(
                f"{growth['metrics']['calls']:,} log_metrics calls: the last tenth within "
                f"{(GROWTH_MAX_RATIO - 1) * 100:.0f} % of the first (median)",
                growth["metrics"]["last_vs_first"],
                GROWTH_MAX_RATIO,
                "x",
            )
        )
        targets.append(
            _target(
                f"a journal grown to {growth['journal']['journal_lines']:,} lines: resumed round "
                f"trips within {(GROWTH_MAX_RATIO - 1) * 100:.0f} % of the first ones",
                growth["journal"]["last_vs_first"],
                GROWTH_MAX_RATIO,
                "x",
            )
        )
    targets.extend(_orchard_targets(results.get("orchard", {})))
    sacred = results.get("sacred")
    if sacred:
        targets.append(
            _target(
                "warm round trip <= Sacred's with the same manifest (median ratio)",
                sacred["ratio_median"],
                SACRED_MAX_RATIO,
                "x",
            )
        )
    return targets


def _orchard_targets(orchard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's targets on the orchard recipe in a git checkout."""
    targets: list[dict[str, Any]] = []
    strict = orchard.get("strict")
    if strict:
        targets.append(
            _target(
                f"orchard strict, warm <= {ORCHARD_WARM_MAX}x the floor (median ratio)",
                strict["warm"]["ratio_median"],
                ORCHARD_WARM_MAX,
                "x",
            )
        )
        targets.append(
            _target(
                f"orchard strict, stderr a terminal, warm <= {ORCHARD_TERMINAL_MAX}x the floor",
                strict["terminal"]["ratio_median"],
                ORCHARD_TERMINAL_MAX,
                "x",
            )
        )
    for mode in ("strict", "relaxed"):
        entry = orchard.get(mode)
        if not entry:
            continue
        targets.append(
            _target(
                f"orchard {mode}, first round trip in a process <= {ORCHARD_FIRST_MAX}x warm",
                entry["first_vs_warm"],
                ORCHARD_FIRST_MAX,
                "x",
            )
        )
        targets.append(
            _target(
                f"orchard {mode}, cold process beyond import torch <= {ORCHARD_COLD_MAX_MS:.0f} ms",
                entry["cold_overhead_ms"],
                ORCHARD_COLD_MAX_MS,
                "ms",
            )
        )
    return targets


def _stats(summary: Mapping[str, Any], unit: str = "ms") -> str:
    return (
        f"min {summary['min']:.1f} / median {summary['median']:.1f} / "
        f"p90 {summary['p90']:.1f} {unit} (n={summary['n']})"
    )


def result_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(section, measurement, value)`` rows, in reading order."""
    rows: list[tuple[str, str, str]] = []
    warm = results.get("warm")
    if warm:
        rows.append(("warm", "round trip (enter -> report -> exit)", _stats(warm["round_trip_ms"])))
        for step, ms in warm["step_median_ms"].items():
            rows.append(("warm", f"step {step} (median)", f"{ms:.2f} ms"))
        rows.append(
            ("warm", "outside the steps (median)", f"{warm['outside_steps_median_ms']:.2f} ms")
        )
        for name, summary in warm["components_ms"].items():
            rows.append(("warm", f"part: {name}", _stats(summary)))
        terminal = warm["terminal"]
        rows.append(("warm", "round trip, stderr a terminal", _stats(terminal["round_trip_ms"])))
        rows.append(
            (
                "warm",
                "step report, stderr a terminal (median)",
                f"{terminal['report_step_median_ms']:.2f} ms",
            )
        )
    floor = results.get("floor")
    if floor:
        rows.append(("floor", "hand-written round trip", _stats(floor["round_trip_ms"])))
        if "ratio_median" in floor:
            rows.append(
                (
                    "floor",
                    "ours / floor",
                    f"{floor['ratio_median']:.2f}x median, {floor['ratio_min']:.2f}x min",
                )
            )
    cold = results.get("cold_start")
    if cold:
        rows.append(("cold", "python + import torch", _stats(cold["import_torch_ms"])))
        rows.append(("cold", "+ import orchestrator_fsm", _stats(cold["import_package_ms"])))
        rows.append(("cold", "+ recipe + one round trip", _stats(cold["round_trip_ms"])))
        rows.append(
            (
                "cold",
                "overhead beyond import torch",
                f"{cold['overhead_ms']:.1f} ms (of medians; of minimums "
                f"{cold['overhead_of_minimums_ms']:.1f} ms)",
            )
        )
        rows.append(("cold", "of which importing", f"{cold['import_overhead_ms']:.1f} ms"))
        after = cold["after_torch_ms"]
        rows.append(
            (
                "cold",
                "process life after import torch (median)",
                f"torch only {after['torch']['median']:.1f} ms, import "
                f"{after['import']['median']:.1f} ms, round trip "
                f"{after['roundtrip']['median']:.1f} ms",
            )
        )
        rows.append(
            (
                "cold",
                "overhead, gc.collect() after torch on both sides",
                f"{cold['overhead_collected_ms']:.1f} ms (after torch + collect: torch only "
                f"{after['torch_collected']['median']:.1f} ms, round trip "
                f"{after['roundtrip_collected']['median']:.1f} ms)",
            )
        )
        inner = cold["inside_round_trip_process_median_ms"]
        rows.append(
            (
                "cold",
                "inside the process (median)",
                ", ".join(f"{key} {value:.1f} ms" for key, value in inner.items()),
            )
        )
        first = sorted(
            cold["first_round_trip_step_median_ms"].items(), key=lambda item: item[1], reverse=True
        )
        rows.append(
            (
                "cold",
                "first round trip, slowest steps (median)",
                ", ".join(f"{step} {ms:.1f} ms" for step, ms in first[:3]),
            )
        )
        exits = cold["interpreter_exit_median_ms"]
        rows.append(
            (
                "cold",
                "interpreter shutdown (median)",
                f"torch only {exits['torch']:.1f} ms, after import {exits['import']:.1f} ms, "
                f"after a round trip {exits['roundtrip']:.1f} ms; collected: "
                f"{exits['torch_collected']:.1f} / {exits['roundtrip_collected']:.1f} ms",
            )
        )
        top = cold["top_imports_beyond_torch"]
        rows.append(
            (
                "cold",
                "imports after torch, by package (self time, -X importtime)",
                ", ".join(f"{entry['package']} {entry['self_ms']:.1f}" for entry in top[:8])
                + " ms",
            )
        )
    cli = results.get("cli_startup")
    if cli:
        for label, entry in cli["commands"].items():
            torch = ", imports torch" if entry["imports_torch"] else ", no torch"
            rows.append(("cli", f"orchestrator-fsm {label}", _stats(entry["ms"]) + torch))
    orchard = results.get("orchard", {})
    for mode in ("strict", "relaxed"):
        entry = orchard.get(mode)
        if not entry:
            continue
        for label, part in (("", entry["warm"]), (", stderr a terminal", entry["terminal"])):
            rows.append(
                (
                    "orchard",
                    f"{mode} round trip in a git checkout{label}",
                    f"{_stats(part['round_trip_ms'])}; floor {part['floor_ms']['median']:.1f} ms; "
                    f"{part['ratio_median']:.2f}x",
                )
            )
        slowest = sorted(entry["warm"]["step_median_ms"].items(), key=lambda item: -item[1])
        rows.append(
            (
                "orchard",
                f"{mode}: slowest steps (warm medians)",
                ", ".join(f"{step} {ms:.1f}" for step, ms in slowest[:4]) + " ms",
            )
        )
        rows.append(
            (
                "orchard",
                f"{mode}: first round trip in a fresh process",
                f"{_stats(entry['first_round_trip_ms'])}; {entry['first_vs_warm']:.2f}x warm",
            )
        )
        rows.append(
            (
                "orchard",
                f"{mode}: cold process beyond import torch",
                f"{entry['cold_overhead_ms']:.1f} ms; hand-written code (the floor) "
                f"{entry['floor_cold_overhead_ms']:.1f} ms",
            )
        )
    scale = results.get("scale")
    if scale:
        for entry in scale["existing_runs"]:
            rows.append(
                (
                    "scale",
                    f"{entry['existing_runs']:,} existing runs",
                    f"{_stats(entry['round_trip_ms'])}; {entry['vs_first']:.2f}x",
                )
            )
        for entry in scale["concurrency"]:
            step, ms = max(entry["step_median_ms"].items(), key=lambda item: item[1])
            rows.append(
                (
                    "scale",
                    f"{entry['processes']} concurrent processes",
                    f"wall {entry['wall_ms']:.0f} ms, {entry['wall_per_run_ms']:.1f} ms per run; "
                    f"round trip median {entry['round_trip_median_ms']:.1f} ms, "
                    f"max {entry['round_trip_max_ms']:.1f} ms; slowest step {step} "
                    f"{ms:.1f} ms (median)",
                )
            )
        advance = scale["advance"]
        rows.append(("scale", "bare machine advance()", _stats(advance["advance_us"], "us")))
        rows.append(("scale", "bare machine construction", _stats(advance["construct_us"], "us")))
        growth = scale.get("growth")
        if growth:
            metrics, journal = growth["metrics"], growth["journal"]
            rows.append(
                (
                    "scale",
                    f"log_metrics over {metrics['calls']:,} calls",
                    f"first tenth {metrics['first_tenth']['median']:.1f} us, last tenth "
                    f"{metrics['last_tenth']['median']:.1f} us (median); "
                    f"{metrics['last_vs_first']:.2f}x",
                )
            )
            rows.append(
                (
                    "scale",
                    f"resumed round trips, journal grown to {journal['journal_lines']:,} lines",
                    f"first tenth {journal['first_tenth']['median']:.1f} ms, last tenth "
                    f"{journal['last_tenth']['median']:.1f} ms; {journal['last_vs_first']:.2f}x; "
                    f"read_run {journal['read_run_us_per_line']:.1f} us per line",
                )
            )
    sacred = results.get("sacred")
    if sacred:
        rows.append(("sacred", "ours, round trip in a git checkout", _stats(sacred["ours_ms"])))
        rows.append(
            (
                "sacred",
                f"Sacred {sacred['sacred_version']} ex.run(), FileStorageObserver",
                _stats(sacred["sacred_ms"]),
            )
        )
        rows.append(
            (
                "sacred",
                "Sacred + config, requirements and git written by hand",
                _stats(sacred["sacred_with_manifest_ms"]),
            )
        )
        rows.append(
            (
                "sacred",
                "ours / Sacred with the manifest (bare Sacred)",
                f"{sacred['ratio_median']:.2f}x median "
                f"({sacred['ratio_to_bare_sacred_median']:.2f}x)",
            )
        )
        cpu = sacred["cpu_mean_ms"]
        rows.append(
            (
                "sacred",
                "CPU time per round trip (with git's), mean",
                f"ours {cpu['ours']:.1f}, Sacred {cpu['sacred']:.1f}, "
                f"Sacred + manifest {cpu['sacred_with_manifest']:.1f} ms; "
                f"{sacred['cpu_ratio_mean']:.2f}x",
            )
        )
        created = sacred.get("file_creation_cpu_us")
        if created:
            rows.append(
                (
                    "sacred",
                    "CPU to create one file here (ours makes 20 a round trip, Sacred + manifest 9)",
                    f"{created[0]:.0f} us before the rounds, {created[1]:.0f} us after",
                )
            )
        slowest = sorted(sacred["step_median_ms"].items(), key=lambda item: -item[1])[:4]
        rows.append(
            (
                "sacred",
                "ours: slowest steps (warm medians)",
                ", ".join(f"{step} {ms:.1f}" for step, ms in slowest) + " ms",
            )
        )
    capture = results.get("capture")
    if capture:
        rows.append(("capture", "round trip, capture unused", _stats(capture["unused_ms"])))
        rows.append(("capture", "round trip, capture bypassed", _stats(capture["bypassed_ms"])))
        rows.append(
            (
                "capture",
                "difference of medians",
                f"{capture['median_difference_ms']:.2f} ms (bypassed IQR "
                f"{capture['bypassed_iqr_ms']:.2f} ms: "
                f"{'measurable' if capture['measurable'] else 'not measurable'})",
            )
        )
        for kind, label in (("every_call", "every call"), ("buffered", "buffered")):
            mlflow = (capture.get("mlflow") or {}).get(kind)
            if mlflow:
                rows.append(
                    (
                        "capture",
                        f"MLflow log_metrics, {label} (flush_every {mlflow['flush_every']})",
                        f"{_stats(mlflow['log_metrics_us'], 'us')}; mean {mlflow['mean_us']:.0f} "
                        f"us; exit {mlflow['exit_ms']:.0f} ms",
                    )
                )
    join = results.get("join")
    if join:
        from benchmarks.join import format_rows

        rows.extend(("join", name, value) for name, value in format_rows(join))
    return rows


def _target_rows(results: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (
            target["target"],
            f"{target['measured']:g} {target['unit']}",
            "met" if target["met"] else "MISSED",
        )
        for target in results.get("targets", [])
    ]


def _heading(results: Mapping[str, Any]) -> str:
    meta = results["meta"]
    changed = meta.get("dirty_files") or []
    dirty = f" (uncommitted changes in {', '.join(changed)})" if meta.get("tree_dirty") else ""
    return (
        f"{meta['date_utc']}, commit {meta['commit']}{dirty}, {meta['cpu_model']} "
        f"({meta['usable_cpus']} usable CPUs), load {meta['load_average_before']} -> "
        f"{meta.get('load_average_after')}, Python {meta['python']}, torch {meta['torch']}"
        + (", QUICK mode" if meta.get("quick") else "")
    )


def _progress_line(results: Mapping[str, Any]) -> str:
    parts = results.get("progress", [])
    return "Wall time and 1-minute load average at the start of each part: " + "; ".join(
        f"{part['part']} {part['wall_s']:.0f} s, load {(part['load_average_at_start'] or ['?'])[0]}"
        for part in parts
    )


def print_results(console: Console, results: Mapping[str, Any]) -> None:
    """The results and the targets as rich tables."""
    table = Table(title="orchestrator-fsm benchmarks", caption=_heading(results))
    for column in ("section", "measurement", "value"):
        table.add_column(column, overflow="fold")
    for row in result_rows(results):
        table.add_row(*row)
    console.print(table)
    console.print(_progress_line(results))
    targets = _target_rows(results)
    if targets:
        verdicts = Table(title="targets")
        for column in ("target", "measured", "verdict"):
            verdicts.add_column(column)
        for text, measured, verdict in targets:
            style = "green" if verdict == "met" else "bold red"
            verdicts.add_row(text, measured, f"[{style}]{verdict}[/{style}]")
        console.print(verdicts)


def render_markdown(results: Mapping[str, Any]) -> str:
    """The results and the targets as Markdown tables, headed by where they were taken."""
    lines = [
        f"Measured {_heading(results)}.",
        "",
        _progress_line(results) + ".",
        "",
        "| section | measurement | value |",
    ]
    lines.append("|---|---|---|")
    lines.extend(f"| {a} | {b} | {c} |" for a, b, c in result_rows(results))
    targets = _target_rows(results)
    if targets:
        lines += ["", "| target | measured | verdict |", "|---|---|---|"]
        lines.extend(f"| {a} | {b} | {c} |" for a, b, c in targets)
    return "\n".join(lines) + "\n"


def write_json(path: Path, results: Mapping[str, Any]) -> None:
    """Write ``results`` to ``path`` atomically (folders created as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, results)
