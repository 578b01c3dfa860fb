"""``python -m benchmarks``: run the benchmark sections, print a table, write JSON.

Run from the repository root. ``--quick`` shrinks every section to a smoke run (a
few seconds per section, no 10,000-directory or 32-process parts, no unsampled warm-up
spawn before the cold starts); ``-n`` sets the number of warm round trips; ``--only``
picks sections; ``--json`` writes the numbers, ``--markdown`` the results table used
in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import SECTIONS

__all__ = ["main"]


def _counts(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1000,10000; got {text!r}"
        ) from None
    if not values or any(value < 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 0, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark orchestrator-fsm's lifecycle (run from the repository root).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sample sizes for a smoke run: skips 10,000 existing runs and 32 processes",
    )
    parser.add_argument(
        "-n",
        "--iterations",
        type=_positive,
        help="warm round trips of ours and of the floor, and per existing-runs count "
        "(default 60, quick 5)",
    )
    parser.add_argument(
        "--cold-runs",
        type=_positive,
        help="fresh interpreters per cold-start kind (default 9, quick 1)",
    )
    parser.add_argument(
        "--existing",
        type=_counts,
        help="existing run directories to compare, first is the baseline "
        "(default 0,1000,10000; quick 0,100)",
    )
    parser.add_argument(
        "--processes",
        type=_counts,
        help="concurrent process counts (default 1,8,32; quick 1,2)",
    )
    parser.add_argument(
        "--machines",
        type=_positive,
        help="bare machines driven for the advance() cost (default 2000, quick 50)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable); floor also runs warm for the ratio",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    parser.add_argument(
        "--markdown", type=Path, metavar="PATH", help="write the results table as Markdown"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.processes is not None and 0 in args.processes:
        parser.error(f"--processes: every count must be >= 1, got {args.processes}")
    # Imported once the arguments are known good: they load torch and the package.
    from rich.console import Console

    from benchmarks.suite import BenchmarkSettings
    from benchmarks.summary import (
        collect_meta,
        evaluate_targets,
        load_average,
        print_results,
        render_markdown,
        write_json,
    )

    settings = BenchmarkSettings.from_args(
        quick=args.quick,
        iterations=args.iterations,
        cold_runs=args.cold_runs,
        existing=args.existing,
        processes=args.processes,
        machines=args.machines,
        only=args.only,
    )
    console = Console()
    results: dict[str, Any] = {
        "meta": collect_meta(settings.as_dict()),
        "settings": settings.as_dict(),
    }
    results.update(settings.run(console))
    results["meta"]["load_average_after"] = load_average()
    results["targets"] = evaluate_targets(results)
    print_results(console, results)
    if args.json is not None:
        write_json(args.json, results)
        console.print(f"results written to {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(render_markdown(results), encoding="utf-8")
        console.print(f"results table written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
