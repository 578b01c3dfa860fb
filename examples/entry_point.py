"""An ``--entry`` pipeline: a function the command line calls with the orchestrator.

    orchestrator-fsm run examples/recipes/mini_cnn.yaml --entry examples.entry_point:main
    orchestrator-fsm run examples/recipes/mini_cnn.yaml --entry examples/entry_point.py:main
    python examples/entry_point.py [--set KEY=VALUE ...]

The CLI loads the recipe, enters the lifecycle, calls ``main(orch)`` at READY and
cleans up afterwards, whatever happens; it prints the run directory and the final
status and exits 0, 1 (failed), 2 (config error) or 130 (interrupted). Run as a
script, this file does the same, with its outputs in a new temporary directory
unless ``--set telemetry.output_dir=DIR`` is given.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from orchestrator_fsm import RootOrchestrator, make_generator

RECIPE = Path(__file__).resolve().parent / "recipes" / "mini_cnn.yaml"


def main(orch: RootOrchestrator) -> None:
    """Report the environment, draw seeded numbers, save a summary under ``exports/``."""
    orch.log_environment_report()
    log = orch.run_logger or logging.getLogger(__name__)
    generator = make_generator(orch.cfg.training.seed, purpose="entry_point_example")
    sample = torch.randn(4, generator=generator, device="cpu").tolist()
    summary = {
        "dataset": orch.cfg.dataset.name,
        "architecture": orch.cfg.architecture.name,
        "seed": orch.cfg.training.seed,
        "device": str(orch.get_device()),
        "sample": sample,
    }
    log.info("entry point example: %s", summary)
    if orch.paths is not None:  # rank 0 owns the run directory
        target = orch.paths.exports / "summary.json"
        target.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"entry point: wrote {target}")


if __name__ == "__main__":
    # The same command as `orchestrator-fsm run`, started the way a shell would.
    argv = ["run", str(RECIPE), "--entry", f"{Path(__file__).resolve()}:main", *sys.argv[1:]]
    if not any(arg.startswith("telemetry.output_dir=") for arg in argv):
        output_dir = tempfile.mkdtemp(prefix="orchestrator-fsm-entry-")
        argv += ["--set", f"telemetry.output_dir={output_dir}"]
    raise SystemExit(subprocess.call([sys.executable, "-m", "orchestrator_fsm", *argv]))
