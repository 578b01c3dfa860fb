"""The ``orchestrator-fsm`` command (also ``python -m orchestrator_fsm``).

Sub-commands, one module each beside :mod:`orchestrator_fsm.cli.main` (the parser):

- ``run [RECIPE] [--set a.b=v ...] [--entry module:function] [--debug]`` runs a
  pipeline inside the lifecycle (by default the bundled demo recipe and pipeline);
- ``diagram [--format mermaid|dot|svg] [--output PATH]`` draws the state machine;
- ``inspect RUN_DIR [--json]`` shows a run's status, timeline, error and files;
- ``runs [OUTPUT_DIR] [--status S] [--name SUBSTR] [--since WHEN] [--json]`` lists
  the runs of an output directory, newest first, with their true status;
- ``validate RECIPE [--set a.b=v ...]`` checks a recipe and summarises it;
- ``rerun RUN_DIR [--strict]`` runs a run again from its bundle and compares the two
  (its own exit codes: 0 identical, 3 within tolerance, 4 diverged, 5 refused on drift);
- ``diff RUN_A RUN_B [--json]`` shows what differs between two runs.

Exit codes: 0 success; 1 a failure in the pipeline, the lifecycle or a diagram;
2 a usage or config error (bad recipe, bad ``--entry``, no run in ``RUN_DIR``);
130 interrupted (Ctrl-C, or SIGTERM during ``run``).
"""

from orchestrator_fsm.cli._shared import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from orchestrator_fsm.cli.main import build_parser, main
from orchestrator_fsm.entry import resolve_entry
from orchestrator_fsm.errors import EntryPointError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EntryPointError",
    "build_parser",
    "main",
    "resolve_entry",
]
