"""How long the quick commands of ``orchestrator-fsm`` take, spawn to exit.

``python -m benchmarks.cli_startup [-n RUNS] [--json PATH]`` (from the repository root)
runs each of ``--help``, ``--version``, ``validate``, ``inspect``, ``diagram`` and
``runs`` ``RUNS`` times as a fresh process of the installed
console script, inside a :class:`~benchmarks._common.Sandbox`, and reports min / median
/ p90 in milliseconds. Bytecode is cached (one unsampled run first), as a user's
install has it. One more run of each, with ``-X importtime``, says whether it imported
torch (none should). The target: each well under 300 ms (median). Not a test: nothing
fails on a slow number; ``python -m benchmarks --only cli`` runs it in the suite.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks._common import Sandbox, quiet_stderr, summarize

__all__ = ["TARGET_MS", "main", "measure_cli_startup"]

#: Each quick command's target, spawn to exit (median, milliseconds).
TARGET_MS: Final = 300.0

_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", re.MULTILINE)


def _command_line() -> list[str]:
    script = Path(sys.executable).parent / "orchestrator-fsm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator_fsm"]


def _spawn(argv: Sequence[str], box: Sandbox, *, probe: bool = False) -> tuple[float, str, int]:
    """Seconds from spawn to exit, stderr and the exit code of one run of ``argv``."""
    env = box.env(bytecode_cache=True)
    if probe:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    t0 = time.perf_counter()
    done = subprocess.run(
        [*_command_line(), *argv],
        cwd=box.cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )
    return time.perf_counter() - t0, done.stderr, done.returncode


def _commands(box: Sandbox) -> dict[str, list[str]]:
    """What is measured: a recipe to validate and a finished run to inspect, made here."""
    from orchestrator_fsm import Config, RootOrchestrator

    recipe = box.recipe("cli")
    with quiet_stderr(), RootOrchestrator(Config.from_recipe(recipe)) as orch:
        pass
    assert orch.paths is not None
    commands = {
        "--help": ["--help"],
        "--version": ["--version"],
        "validate RECIPE": ["validate", str(recipe)],
        "inspect RUN_DIR": ["inspect", str(orch.paths.root)],
        "inspect RUN_DIR --json": ["inspect", str(orch.paths.root), "--json"],
        "diagram": ["diagram"],
        "diagram --format dot": ["diagram", "--format", "dot"],
        "runs OUTPUT_DIR": ["runs", str(orch.paths.root.parent)],
    }
    return commands


def measure_cli_startup(runs: int) -> dict[str, Any]:
    """``{"commands": {label: {"argv", "ms", "imports_torch"}}, "target_ms", "met"}``."""
    with Sandbox("cli") as box:
        commands = _commands(box)
        results: dict[str, Any] = {}
        for label, argv in commands.items():
            _, stderr, code = _spawn(argv, box)  # fills the bytecode cache
            if code != 0:
                raise RuntimeError(f"orchestrator-fsm {' '.join(argv)} exited {code}: {stderr}")
            _, imports, _ = _spawn(argv, box, probe=True)
            times = [_spawn(argv, box)[0] for _ in range(runs)]
            results[label] = {
                "argv": [a.replace(str(box.root), "<sandbox>") for a in argv],
                "ms": summarize(times),
                "imports_torch": "torch" in _IMPORT_LINE.findall(imports),
            }
    worst = max(entry["ms"]["median"] for entry in results.values())
    return {
        "runs": runs,
        "commands": results,
        "target_ms": TARGET_MS,
        "slowest_median_ms": worst,
        "met": worst <= TARGET_MS and not any(e["imports_torch"] for e in results.values()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cli_startup", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-n", "--runs", type=int, default=9, help="runs per command (9)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    result = measure_cli_startup(args.runs)
    for label, entry in result["commands"].items():
        ms = entry["ms"]
        torch = "imports torch" if entry["imports_torch"] else "no torch"
        print(
            f"orchestrator-fsm {label:24} min {ms['min']:6.1f}  median {ms['median']:6.1f}  "
            f"p90 {ms['p90']:6.1f} ms  ({torch})"
        )
    verdict = "met" if result["met"] else "MISSED"
    print(f"target: each under {TARGET_MS:.0f} ms (median), none importing torch: {verdict}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
