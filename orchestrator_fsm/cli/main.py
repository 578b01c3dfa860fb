"""The argument parser of ``orchestrator-fsm`` and :func:`main`, which dispatches to the
sub-command modules beside it (``run``, ``diagram``, ``inspect``, ``runs``, ``validate``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator_fsm._version import __version__
from orchestrator_fsm.cli._shared import EXIT_INTERRUPTED, EXIT_USAGE
from orchestrator_fsm.cli.diagram import cmd_diagram
from orchestrator_fsm.cli.inspect import cmd_inspect
from orchestrator_fsm.cli.run import cmd_run
from orchestrator_fsm.cli.runs import LISTED_STATUSES, cmd_runs, since_argument
from orchestrator_fsm.cli.validate import cmd_validate

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``orchestrator-fsm`` (each sub-command sets ``handler``)."""
    from orchestrator_fsm.diagrams import FORMATS

    parser = argparse.ArgumentParser(
        prog="orchestrator-fsm",
        description="Run, draw and inspect the lifecycle of machine-learning experiments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set training.seed=7 (repeatable; YAML scalars)",
    )

    run = commands.add_parser(
        "run",
        parents=[overrides],
        help="run a pipeline inside the lifecycle (default: the bundled demo)",
        description="Run a pipeline inside the lifecycle. Exit codes: 0 completed, "
        "1 failed (or refused: another launch of the same run holds the run lock), "
        "2 config or --entry error, 128 + the signal's number when a signal "
        "ended it (130 for Ctrl-C).",
    )
    run.add_argument(
        "recipe", nargs="?", metavar="RECIPE", help="YAML recipe (default: the bundled demo)"
    )
    run.add_argument(
        "--entry",
        metavar="MODULE:FUNCTION",
        help="the pipeline, called as FUNCTION(orchestrator); MODULE may be a file "
        "path/to/file.py (default: the bundled demo pipeline)",
    )
    run.add_argument("--debug", action="store_true", help="show the traceback when the run fails")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue this run directory as its next attempt instead of making a new one",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="with --resume: continue it even though it ran another config",
    )
    run.set_defaults(handler=cmd_run)

    diagram = commands.add_parser(
        "diagram", help="draw the lifecycle state machine from its transition table"
    )
    diagram.add_argument("--format", choices=FORMATS, default="mermaid")
    diagram.add_argument(
        "--output", metavar="PATH", help="write to PATH (atomically) instead of stdout"
    )
    diagram.set_defaults(handler=cmd_diagram)

    inspect = commands.add_parser(
        "inspect", help="show a run's status, lifecycle timeline, error and files"
    )
    inspect.add_argument("run_dir", metavar="RUN_DIR")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead")
    inspect.set_defaults(handler=cmd_inspect)

    runs = commands.add_parser(
        "runs",
        help="list the runs of an output directory, newest first, with their true status",
        description="List the runs of OUTPUT_DIR (default: outputs, the run command's "
        "default telemetry.output_dir): id, status (crashed for a run whose process is "
        "gone, refused for one the run lock turned away), attempts, start, duration, "
        "key metrics and entry. Reads only each run's run.json.",
    )
    runs.add_argument(
        "output_dir", nargs="?", metavar="OUTPUT_DIR", help="where the run directories are"
    )
    runs.add_argument(
        "--status",
        action="append",
        choices=LISTED_STATUSES,
        help="only runs with this status (repeatable)",
    )
    runs.add_argument("--name", metavar="SUBSTR", help="only runs whose id contains SUBSTR")
    runs.add_argument(
        "--since",
        type=since_argument,
        metavar="WHEN",
        help="only runs started since WHEN: an age (30m, 2h, 3d, 1w) or an ISO date or "
        "time (2026-12-01, 2026-12-01T09:30, local time unless it has an offset)",
    )
    runs.add_argument("--json", action="store_true", help="print a JSON array instead")
    runs.set_defaults(handler=cmd_runs)

    validate = commands.add_parser(
        "validate", parents=[overrides], help="check a recipe and summarise it"
    )
    validate.add_argument("recipe", metavar="RECIPE")
    validate.set_defaults(handler=cmd_validate)
    return parser


def main(argv: list[str] | None = None, *, exiting: bool = False) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit code.

    ``exiting``: the process ends once this returns (the console command), so a signal
    arriving after the run's outcome is settled ends it at once with that outcome.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.exiting = exiting
    handler: Callable[[argparse.Namespace, Console, Console], int] | None = getattr(
        args, "handler", None
    )
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from rich.console import Console

    try:
        return handler(args, Console(), Console(stderr=True))
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted", style="red")
        return EXIT_INTERRUPTED


def console() -> None:
    """The ``orchestrator-fsm`` command itself: :func:`main`, then exit with its code."""
    raise SystemExit(main(exiting=True))
