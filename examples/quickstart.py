"""Quickstart: the bundled demo pipeline inside a ``with RootOrchestrator(cfg)`` block.

    python examples/quickstart.py [--output-dir DIR] [--set KEY=VALUE ...]

Entering the block seeds every generator, configures threads, creates the run
directory, starts the run log, saves the config and requirements, takes the run lock
and resolves the device; leaving it releases everything again. Outputs go to a new
temporary directory unless ``--output-dir`` is given.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from orchestrator_fsm import Config, RootOrchestrator
from orchestrator_fsm.demo.pipeline import train

RECIPE = Path(__file__).resolve().parent / "recipes" / "mini_cnn.yaml"


def load_config(argv: list[str] | None, description: str = __doc__) -> Config:
    """The example recipe with ``--set`` overrides, writing under ``--output-dir`` (or a
    new temporary directory). The other examples take the same command line."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, help="where the run directory goes")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="orchestrator-fsm-example-"))
    return Config.from_recipe(
        RECIPE, overrides=[f"telemetry.output_dir={output_dir}", *args.overrides]
    )


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(argv)
    with RootOrchestrator(cfg) as orch:
        assert orch.paths is not None  # rank 0 always has a run directory
        print(f"state inside the block: {orch.state.value}")
        print(f"device: {orch.get_device()}; run directory: {orch.paths.root}")
        result = train(orch)  # makes the environment report first, then trains
    print(f"state after the block: {orch.state.value}")
    epochs = len(result.epochs)
    print(f"trained {epochs} epoch{'s' * (epochs != 1)}; metrics: {result.metrics_path}")
    print(f"checkpoint: {result.checkpoint_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
