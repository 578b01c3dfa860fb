"""``orchestrator-fsm diagram``: the lifecycle state machine drawn from its table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator_fsm._fs import atomic_write_text
from orchestrator_fsm.cli._shared import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, say
from orchestrator_fsm.errors import OrchestratorError

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["cmd_diagram"]


def cmd_diagram(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Write the ``args.format`` diagram to ``args.output`` (or stdout); the exit code.

    Without ``--format`` the output file's extension decides, and without either the
    diagram is Mermaid; an extension that names no format is a usage error."""
    from orchestrator_fsm.diagrams import EXTENSIONS, render

    fmt: str = args.format or "mermaid"
    if args.format is None and args.output is not None:
        suffix = Path(args.output).suffix.lower()
        if suffix in EXTENSIONS:
            fmt = EXTENSIONS[suffix]
        elif suffix:
            known = ", ".join(EXTENSIONS)
            say(
                err,
                f"error: cannot tell the diagram format from {args.output!r} (extension "
                f"{suffix}); give --format mermaid|dot|svg, or name a {known} file",
                "red",
            )
            return EXIT_USAGE
    try:
        text = render(fmt)
    except OrchestratorError as exc:  # GraphvizNotFoundError, or dot itself failed
        say(err, f"error: {exc}", "red")
        return EXIT_FAILURE
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return EXIT_OK
    target = Path(args.output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    except OSError as exc:
        say(err, f"error: cannot write the diagram to {target}: {exc}", "red")
        return EXIT_FAILURE
    say(err, f"wrote the {fmt} diagram to {target}")
    return EXIT_OK
