"""``orchestrator-fsm report PATH``: one self-contained HTML page of a run, or one page
comparing the runs of an output directory or a sweep (see :mod:`orchestrator_fsm.page`).

Jinja2 comes with the ``report`` extra; without it the command says how to install it.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator_fsm.cli._shared import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, say

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["cmd_report"]


def _diff(runs: tuple[Path, ...], err: Console) -> dict[str, Any] | None:
    """``diff``'s result for exactly two runs (None otherwise, or without bundles)."""
    if len(runs) != 2:
        return None
    from orchestrator_fsm.cli.diff import diff_runs
    from orchestrator_fsm.reproduce.bundle import BundleError

    try:
        return diff_runs(runs[0], runs[1])
    except (BundleError, OSError, ValueError) as exc:
        say(err, f"note: no diff of the two runs on the page ({exc})", "yellow")
        return None


def cmd_report(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Write the page of ``args.path`` (to ``args.output``, default ``report.html`` in
    it) and say where; 2 when the path is no run, output directory or sweep."""
    if importlib.util.find_spec("jinja2") is None:
        say(
            err,
            "error: the report page needs Jinja2, which is not installed; install it with "
            "`pip install 'orchestrator-fsm[report]'` (or `pip install jinja2`)",
            "red",
        )
        return EXIT_FAILURE
    from orchestrator_fsm.page import find_runs, write_pages

    try:
        target = find_runs(Path(args.path))
    except FileNotFoundError as exc:
        say(err, f"error: {exc}", "red")
        return EXIT_USAGE
    if target.kind != "run" and not target.runs:
        say(err, f"error: the sweep in {target.folder} has no run directories yet", "red")
        return EXIT_USAGE
    output = None if args.output is None else Path(args.output).absolute()
    try:
        written = write_pages(target, output, _diff(target.runs, err))
    except (OSError, ValueError) as exc:
        say(err, f"error: could not write the page: {exc}", "red")
        return EXIT_FAILURE
    if len(written) > 1:
        say(out, f"{len(written) - 1} run pages written, one in each run directory")
    say(out, f"report: {written[-1]}")
    return EXIT_OK
