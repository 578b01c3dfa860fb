"""The argument parser of ``orchestrator-fsm`` and :func:`main`, which dispatches to the
sub-command modules beside it (``run``, ``diagram``, ``inspect``, ``runs``, ``validate``,
``rerun``, ``diff``, ``report``)."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from orchestrator_fsm._startup import hand_back, ignore_once_settled, interrupted_line
from orchestrator_fsm._version import __version__
from orchestrator_fsm.cli._shared import EXIT_INTERRUPTED, EXIT_USAGE
from orchestrator_fsm.lifecycle.signals import hold_startup_signals

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["build_parser", "main"]

Handler = Callable[[argparse.Namespace, "Console", "Console"], int]


def _command(module: str, function: str) -> Handler:
    """The sub-command ``function`` of ``orchestrator_fsm.cli.<module>``, imported only
    when it runs: ``--help``, ``--version`` and a usage error import none of them."""

    def handler(args: argparse.Namespace, out: Console, err: Console) -> int:
        command: Handler = getattr(
            importlib.import_module(f"orchestrator_fsm.cli.{module}"), function
        )
        return command(args, out, err)

    handler.__qualname__ = handler.__name__ = function
    return handler


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
    _add_sweep_arguments(run)
    run.add_argument(
        "--entry",
        metavar="MODULE:FUNCTION",
        help="the pipeline, called as FUNCTION(orchestrator); MODULE may be a file "
        "path/to/file.py (default: the recipe's entry; the bundled demo for its recipe)",
    )
    run.add_argument(
        "--script",
        metavar="SCRIPT.py",
        help="run this script as __main__ inside the run, with the arguments after `--` "
        "as its sys.argv[1:] (orchestrator_fsm.current_run() reaches the run)",
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
    run.set_defaults(handler=_command("run", "cmd_run"))

    diagram = commands.add_parser(
        "diagram", help="draw the lifecycle state machine from its transition table"
    )
    diagram.add_argument(
        "--format",
        choices=FORMATS,
        help="default: from the --output file's extension (.mmd, .dot or .gv, .svg), else mermaid",
    )
    diagram.add_argument(
        "--output", metavar="PATH", help="write to PATH (atomically) instead of stdout"
    )
    diagram.set_defaults(handler=_command("diagram", "cmd_diagram"))

    inspect = commands.add_parser(
        "inspect", help="show a run's status, lifecycle timeline, error and files"
    )
    inspect.add_argument("run_dir", metavar="RUN_DIR")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead")
    inspect.set_defaults(handler=_command("inspect", "cmd_inspect"))

    from orchestrator_fsm.cli.runs_args import since_argument
    from orchestrator_fsm.status import STATUSES

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
        choices=STATUSES,
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
    runs.set_defaults(handler=_command("runs", "cmd_runs"))

    validate = commands.add_parser(
        "validate", parents=[overrides], help="check a recipe and summarise it"
    )
    validate.add_argument("recipe", metavar="RECIPE")
    validate.add_argument("bare", nargs="*", metavar="KEY=VALUE", help="more overrides, like --set")
    validate.add_argument(
        "--entry",
        metavar="MODULE:FUNCTION",
        help="also check the sections whose schema this pipeline declares, as run does",
    )
    validate.set_defaults(handler=_command("validate", "cmd_validate"))
    _add_reproduce_commands(commands, overrides)
    return parser


def _add_tolerance(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rtol", type=float, default=0.0, help="relative tolerance of metric values (default 0)"
    )
    parser.add_argument(
        "--atol", type=float, default=0.0, help="absolute tolerance of metric values (default 0)"
    )


def _add_reproduce_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    overrides: argparse.ArgumentParser,
) -> None:
    rerun = commands.add_parser(
        "rerun",
        parents=[overrides],
        help="run a run again from its bundle, report drift and whether it matched",
        description="Run RUN_DIR again as a new run and compare it. Exit codes: "
        "0 identical, 3 within tolerance, 4 diverged, 5 refused on drift (--strict), "
        "1 the rerun failed, 2 usage or no rerun bundle in RUN_DIR.",
    )
    rerun.add_argument("run_dir", metavar="RUN_DIR")
    rerun.add_argument("bare", nargs="*", metavar="KEY=VALUE", help="more overrides, like --set")
    rerun.add_argument("--strict", action="store_true", help="refuse to start on any drift")
    rerun.add_argument(
        "--current",
        action="store_true",
        help="run today's working tree instead of the code that ran (by default: the "
        "recorded commit and patch in a temporary git worktree, or the saved entry file)",
    )
    rerun.add_argument(
        "--attempt",
        type=int,
        metavar="N",
        help="rerun what attempt N of the run ran (its kept config and bundle; "
        "default: the latest attempt's)",
    )
    _add_tolerance(rerun)
    rerun.add_argument(
        "--ignore",
        action="append",
        metavar="PATTERN",
        help="metric names not compared (shell pattern, repeatable; "
        "default: *seconds, *_s, *_time)",
    )
    rerun.set_defaults(handler=_command("rerun", "cmd_rerun"))

    diff = commands.add_parser(
        "diff", help="what differs between two runs: config, seeds, packages, git, metrics"
    )
    diff.add_argument("run_a", metavar="RUN_A")
    diff.add_argument("run_b", metavar="RUN_B")
    diff.add_argument("--json", action="store_true", help="print one JSON object instead")
    _add_tolerance(diff)
    diff.set_defaults(handler=_command("diff", "cmd_diff"))

    report = commands.add_parser(
        "report",
        help="write one self-contained HTML page of a run, or comparing runs",
        description="Write a self-contained HTML page (nothing is fetched when it is "
        "opened): for a run directory, its lifecycle drawn on the diagram, timeline per "
        "rank and attempt, metrics, ending, config, environment, git and files; for an "
        "output directory or a sweep's folder, a page comparing its runs (and each "
        "run's own page). Needs Jinja2 (the 'report' extra).",
    )
    report.add_argument(
        "path", metavar="PATH", help="a run directory, an output directory or a sweep's folder"
    )
    report.add_argument(
        "--output", metavar="FILE", help="write the page here (default: report.html in PATH)"
    )
    report.set_defaults(handler=_command("report", "cmd_report"))


def _add_sweep_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "bare",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides, like --set; with --multirun, KEY=a,b,c or KEY=range(1,4) sweeps",
    )
    run.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="run every combination of the swept KEY=a,b,c overrides, each as its own run",
    )
    run.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="with --multirun: run up to N members at once (default 1)",
    )
    run.add_argument(
        "--fail-fast",
        action="store_true",
        help="with --multirun: start no more members once one has failed",
    )
    run.add_argument("--sweep-member", help=argparse.SUPPRESS)
    # Given by `orchestrator-fsm rerun` to the run it starts: recorded as rerun_of.
    run.add_argument("--rerun-of", help=argparse.SUPPRESS)
    # Given by `orchestrator-fsm rerun` too: the file the run's directory is written to.
    run.add_argument("--run-dir-file", help=argparse.SUPPRESS)


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``argv`` parsed; ``KEY=VALUE`` arguments after an option are overrides too. For
    ``run``, what follows the first ``--`` is the script's own arguments
    (``args.script_args``), never read as options or overrides."""
    words = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] | None = None
    if words[:1] == ["run"] and "--" in words:
        cut = words.index("--")
        words, script_args = words[:cut], words[cut + 1 :]
    args, extra = parser.parse_known_args(words)
    args.script_args = script_args
    if extra and hasattr(args, "bare") and all("=" in a and not a.startswith("-") for a in extra):
        args.bare = [*args.bare, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None, *, exiting: bool = False) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit code.

    ``exiting``: the process ends once this returns (the console command), so a signal
    arriving after the run's outcome is settled ends it at once with that outcome.
    """
    try:
        parser = build_parser()
        try:
            args = _parse(parser, argv)
        except SystemExit as exc:  # --help, --version and usage errors
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        args.exiting = exiting
        if args.command != "run":
            hand_back()
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        from rich.console import Console

        return handler(args, Console(), Console(stderr=True))
    except KeyboardInterrupt as exc:
        # Before a run's own signal handling is in place (loading the recipe, importing
        # torch and the entry), or in a command that starts no run: one line, no
        # traceback. A run that has started reports its own interruption instead.
        return _say_interrupted(exc, argv)


def _say_interrupted(exc: KeyboardInterrupt, argv: list[str] | None) -> int:
    """Say in one line on stderr that ``exc`` stopped the command; its exit code."""
    from orchestrator_fsm.errors import RunInterrupted

    signum = exc.signum if isinstance(exc, RunInterrupted) else int(signal.SIGINT)
    sys.stderr.write(interrupted_line(signum, sys.argv[1:] if argv is None else argv))
    sys.stderr.flush()
    return EXIT_INTERRUPTED if signum == signal.SIGINT else 128 + signum


def _ignore_further_interrupts(signum: int, frame: FrameType | None) -> None:
    """While the process says it was interrupted and exits: a second Ctrl-C changes
    nothing and prints nothing."""


def console() -> None:
    """The ``orchestrator-fsm`` command itself: :func:`main`, then exit with its code.

    SIGUSR1 and SIGUSR2 are held from here on (before torch and the entry are imported),
    so a scheduler's checkpoint request during start-up reaches the run's callback once
    the run is live instead of ending the process. A Ctrl-C ends the process at once
    with one line (:mod:`orchestrator_fsm._startup`) until :func:`main` has parsed the
    command line (``run``: until the run's own signal handling takes over); from then
    on it is a ``KeyboardInterrupt`` that :func:`main` (or the run) reports. Once every
    other exit handler has run, a signal no longer changes the exit code."""
    ignore_once_settled()
    hold_startup_signals()
    try:
        code = main(exiting=True)
    except KeyboardInterrupt as exc:  # between main's own handling and here
        signal.signal(signal.SIGINT, _ignore_further_interrupts)
        code = _say_interrupted(exc, None)
    raise SystemExit(code)
