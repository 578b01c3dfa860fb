"""The benchmark command keeps working: a quick run reports every section and cleans up.

No timing is judged here (benchmarks are not tests); only that every section ran, said
what it measured, and left nothing behind outside its own temporary directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator_fsm.lifecycle.table import CLEANUP_STEP, JOIN_STEP, table_steps

REPO = Path(__file__).resolve().parent.parent
# A round trip is one rank-0 run: every step but the one only other ranks take.
STEPS_OF_A_ROUND_TRIP = {*table_steps(), CLEANUP_STEP} - {JOIN_STEP}
SMALLEST = [
    *("-n", "1", "--cold-runs", "1", "--machines", "1"),
    *("--existing", "0,1", "--processes", "1,2"),
]


def benchmarks(
    module: str, *argv: str, env: dict[str, str] | None = None, timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGV`` (``benchmarks`` or one of its modules) run to its end from
    the repository root, its output captured as text; a non-zero exit is returned."""
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def run_quick_benchmarks(tmp_path: Path) -> tuple[dict[str, Any], Path, Path]:
    """Run ``python -m benchmarks --quick`` at the smallest sizes (one sample of each kind,
    one existing run, one and two processes), with its own TMPDIR and XDG_CACHE_HOME."""
    temp_root = tmp_path / "tmp"
    user_cache = tmp_path / "user-cache"
    temp_root.mkdir()
    user_cache.mkdir()
    output = tmp_path / "results" / "bench.json"
    env = dict(os.environ, TMPDIR=str(temp_root), XDG_CACHE_HOME=str(user_cache))
    done = benchmarks("benchmarks", "--quick", *SMALLEST, "--json", str(output), env=env)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "orchestrator-fsm benchmarks" in done.stdout
    results: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    return results, temp_root, user_cache


def assert_stats(summary: dict[str, Any]) -> None:
    assert summary["n"] >= 1
    assert 0 < summary["min"] <= summary["median"] <= summary["p90"] <= summary["max"]


@pytest.mark.slow
def test_quick_benchmark_run_reports_every_section_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    results, temp_root, user_cache = run_quick_benchmarks(tmp_path)

    assert results["meta"]["quick"] is True
    assert results["meta"]["date_utc"]

    warm = results["warm"]
    assert_stats(warm["round_trip_ms"])
    assert set(warm["step_median_ms"]) == STEPS_OF_A_ROUND_TRIP
    for name in (
        "save_config",
        "dump_requirements",
        "dump_git_info_outside_checkout",
        "dump_git_info_in_checkout",
        "build_environment_report",
        "log_report_lines",
    ):
        assert_stats(warm["components_ms"][name])
    assert_stats(warm["terminal"]["round_trip_ms"])

    floor = results["floor"]
    assert_stats(floor["round_trip_ms"])
    assert floor["ratio_median"] > 0

    cold = results["cold_start"]
    for kind in (
        "import_torch_ms",
        "import_package_ms",
        "round_trip_ms",
        "import_torch_collected_ms",
        "round_trip_collected_ms",
    ):
        assert_stats(cold[kind])
    assert isinstance(cold["overhead_ms"], float)
    assert isinstance(cold["overhead_collected_ms"], float)
    assert isinstance(cold["overhead_of_minimums_ms"], float)
    for kind in ("torch", "import", "roundtrip", "torch_collected", "roundtrip_collected"):
        assert_stats(cold["after_torch_ms"][kind])
    assert set(cold["inside_round_trip_process_median_ms"]) == {
        "import_torch",
        "import_package",
        "config",
        "roundtrip",
        "gc_collect_after_torch",
    }
    assert set(cold["first_round_trip_step_median_ms"]) == STEPS_OF_A_ROUND_TRIP
    assert set(cold["interpreter_exit_median_ms"]) == {
        "torch",
        "import",
        "roundtrip",
        "torch_collected",
        "roundtrip_collected",
    }
    assert cold["top_imports_beyond_torch"], "the -X importtime breakdown is empty"

    cli = results["cli_startup"]
    assert {"--help", "--version", "validate RECIPE", "inspect RUN_DIR", "diagram"} <= set(
        cli["commands"]
    )
    for entry in cli["commands"].values():
        assert_stats(entry["ms"])
        assert entry["imports_torch"] is False
        assert not any(str(temp_root) in arg for arg in entry["argv"])

    scale = results["scale"]
    assert [entry["existing_runs"] for entry in scale["existing_runs"]] == [0, 1]
    for entry in scale["existing_runs"]:
        assert_stats(entry["round_trip_ms"])
    assert [entry["processes"] for entry in scale["concurrency"]] == [1, 2]
    for entry in scale["concurrency"]:
        assert entry["wall_ms"] > 0 and entry["round_trip_median_ms"] > 0
        assert set(entry["step_median_ms"]) == STEPS_OF_A_ROUND_TRIP
    assert scale["advance"]["advances_per_machine"] == len(STEPS_OF_A_ROUND_TRIP)
    assert_stats(scale["advance"]["advance_us"])

    growth = scale["growth"]
    assert growth["metrics"]["calls"] == 500
    assert_stats(growth["metrics"]["last_tenth"])
    assert growth["journal"]["journal_lines"] > 5 * 8  # every resume journals its attempt
    assert_stats(growth["journal"]["read_run_ms"])

    orchard = results["orchard"]
    for mode in ("strict", "relaxed"):
        for part in ("warm", "terminal"):
            assert_stats(orchard[mode][part]["round_trip_ms"])
            assert_stats(orchard[mode][part]["floor_ms"])
            assert orchard[mode][part]["ratio_median"] > 0
        assert set(orchard[mode]["warm"]["step_median_ms"]) == STEPS_OF_A_ROUND_TRIP
        assert_stats(orchard[mode]["first_round_trip_ms"])
        assert isinstance(orchard[mode]["cold_overhead_ms"], float)
        assert isinstance(orchard[mode]["floor_cold_overhead_ms"], float)

    assert [part["part"] for part in results["progress"]] == [
        "warm round trips and the floor",
        "cold starts",
        "command start-up",
        "existing run directories",
        "concurrent processes",
        "bare machine advance()",
        "a growing record (metrics calls, resumed attempts)",
        "capture and metrics unused, MLflow per call",
        "the orchard recipe in a git checkout, strict and relaxed",
        "ours and Sacred, the orchard recipe in a git checkout",
        "joining one run: READY lag (torchrun, mp.spawn), polling cost",
    ]
    capture = results["capture"]
    assert_stats(capture["unused_ms"])
    assert_stats(capture["bypassed_ms"])
    assert isinstance(capture["median_difference_ms"], float)
    assert isinstance(capture["measurable"], bool)
    if capture["mlflow"] is not None:
        assert capture["mlflow"]["every_call"]["flush_every"] == 1
        assert capture["mlflow"]["buffered"]["calls"] == 100
        assert_stats(capture["mlflow"]["buffered"]["log_metrics_us"])
    sacred = results["sacred"]  # None where Sacred (the `bench` extra) is not installed
    if sacred is not None:
        for kind in ("ours_ms", "sacred_ms", "sacred_with_manifest_ms"):
            assert_stats(sacred[kind])
        assert sacred["ratio_median"] > 0
        assert set(sacred["step_median_ms"]) == STEPS_OF_A_ROUND_TRIP
    join = results["join"]
    lag = join["ready_lag"]["2"]
    assert lag["launches"] == 1
    assert lag["all_ready_s"]["median"] >= 0
    spawned = join["ready_lag_spawn"]["2"]
    assert spawned["launches"] == 1
    assert spawned["all_ready_s"]["median"] >= 0
    polling = join["polling"]["entry, not ready"]  # the one state a quick run counts
    assert polling["polls"] >= 3
    if join["polling"]["strace"]:
        assert polling["fs_ops_per_poll"] >= 1
    assert len(results["targets"]) == 5 + 2 + 6 + (sacred is not None)
    assert all(isinstance(target["met"], bool) for target in results["targets"])

    # Every sandbox was removed, and the user's cache directory was never written.
    assert list(temp_root.iterdir()) == []
    assert list(user_cache.iterdir()) == []


def test_benchmark_command_rejects_an_unknown_section() -> None:
    done = benchmarks("benchmarks", "--only", "everything", timeout_s=120)
    assert done.returncode == 2
    assert "invalid choice: 'everything'" in done.stderr


@pytest.mark.slow
def test_lockstep_compares_two_checkouts_and_leaves_nothing_behind(tmp_path: Path) -> None:
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    env = dict(os.environ, TMPDIR=str(temp_root), XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = benchmarks(
        "benchmarks.lockstep", str(REPO), str(REPO), "-n", "2", env=env, timeout_s=300
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = done.stdout.splitlines()
    for side in ("old", "new"):
        (line,) = [line for line in lines if line.startswith(f"{side}: ")]
        assert "cpu_ms" in line and "wall_median_ms" in line
    assert any(line.startswith("new / old CPU: ") for line in lines)
    assert list(temp_root.iterdir()) == []
