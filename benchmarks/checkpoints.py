"""What a checkpoint costs: save and load of the demo model, and of a 100 MB state dict.

``python -m benchmarks.checkpoints [--repeats K] [--megabytes M]`` (from the repository
root) times :meth:`~orchestrator_fsm.checkpoints.CheckpointStore.save` (``torch.save``
to a temporary file, fsync, rename, folder fsync, pruning to the last 3) and
:meth:`~orchestrator_fsm.checkpoints.CheckpointStore.load` (``torch.load`` with
``weights_only=True``, every ``load_state_dict``, the random states put back) in a
``tempfile.mkdtemp()`` folder on the disk ``TMPDIR`` names, removed afterwards:

- **demo**: the demo's ``MiniCNN`` at its default size with its Adam optimizer after one
  step (so that the optimizer has its moments), a DataLoader generator;
- **state dict**: a module holding M MB (default 100) of float32 in 10 tensors, SGD
  with momentum (no state before a step: the file is the weights).

Each figure is K (default 10) saves and K loads after one of each unmeasured, next to
the floor: the same state dicts by a bare ``torch.save`` to a path (no temporary file,
no fsync) and ``torch.load``. Not a test: nothing fails on a slow number.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks._common import summarize
from orchestrator_fsm.checkpoints import CheckpointStore
from orchestrator_fsm.demo.pipeline import SHAPES, DemoSettings, MiniCNN

__all__ = ["main", "measure_checkpoints"]


class _Blob(nn.Module):
    """A module whose state dict is ``megabytes`` MB of float32 in 10 tensors."""

    def __init__(self, megabytes: float) -> None:
        super().__init__()
        per_tensor = int(megabytes * 1e6 / 4 / 10)
        self.weights = nn.ParameterList(nn.Parameter(torch.rand(per_tensor)) for _ in range(10))


def _demo_parts() -> dict[str, Any]:
    settings = DemoSettings()
    model = MiniCNN(len(SHAPES), settings.image_size, settings.channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    images = torch.rand(settings.batch_size, 1, settings.image_size, settings.image_size)
    loss = model(images).sum()
    torch.autograd.backward(loss)
    optimizer.step()
    return {"model": model, "optimizer": optimizer}


def _blob_parts(megabytes: float) -> dict[str, Any]:
    model = _Blob(megabytes)
    return {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)}


def _time(parts: dict[str, Any], folder: Path, repeats: int) -> dict[str, Any]:
    store = CheckpointStore(folder)
    generators = {"loader": torch.Generator().manual_seed(0)}
    saves, loads, bare_saves, bare_loads = [], [], [], []
    bare = folder / "bare.pt"
    for step in range(repeats + 1):
        t0 = time.perf_counter()
        path = store.save(step, generators=generators, **parts)
        t1 = time.perf_counter()
        store.load(generators=generators, **parts)
        t2 = time.perf_counter()
        # The floor: the same state dicts by plain torch.save / torch.load, no fsync.
        torch.save({name: part.state_dict() for name, part in parts.items()}, bare)
        t3 = time.perf_counter()
        torch.load(bare, weights_only=True)
        t4 = time.perf_counter()
        if step:  # the first of each warms the caches up
            saves.append(t1 - t0)
            loads.append(t2 - t1)
            bare_saves.append(t3 - t2)
            bare_loads.append(t4 - t3)
    assert path is not None
    return {
        "file_mb": round(path.stat().st_size / 1e6, 3),
        "save_ms": summarize(saves),
        "load_ms": summarize(loads),
        "bare_torch_save_ms": summarize(bare_saves),
        "bare_torch_load_ms": summarize(bare_loads),
    }


def measure_checkpoints(repeats: int, megabytes: float) -> dict[str, Any]:
    """``{"demo": {...}, "state_dict": {...}}``: file size and save/load times (ms)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-checkpoints-"))
    try:
        return {
            "repeats": repeats,
            "demo": _time(_demo_parts(), folder / "demo", repeats),
            "state_dict": {
                "megabytes": megabytes,
                **_time(_blob_parts(megabytes), folder / "blob", repeats),
            },
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.checkpoints", description=__doc__)
    parser.add_argument("--repeats", type=int, default=10, help="saves and loads (default 10)")
    parser.add_argument("--megabytes", type=float, default=100.0, help="state dict size (100)")
    args = parser.parse_args(argv)
    print(json.dumps(measure_checkpoints(max(1, args.repeats), args.megabytes), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
