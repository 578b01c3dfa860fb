"""A user's DDP script started by ``torch.multiprocessing.spawn``, timed by :mod:`benchmarks.join`.

``python _join_spawn.py RECIPE WORLD PORT`` (in a directory holding ``join_entry.py``):
``mp.spawn`` starts WORLD workers; each initialises a gloo process group over
``tcp://127.0.0.1:PORT`` before the orchestrator, as pytorch/examples' imagenet does, so
its ranks meet through the group's store; then ``RootOrchestrator`` (rank and world size
from the group), ``join_entry.ready`` logging when this rank entered READY, a barrier.
"""

from __future__ import annotations

import datetime
import os
import sys


def worker(rank: int, world: int, recipe: str, port: int) -> None:
    import torch.distributed as dist

    from orchestrator_fsm import Config, RootOrchestrator

    sys.path.insert(0, os.getcwd())
    from join_entry import ready  # type: ignore[import-not-found]

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=600),
    )
    try:
        with RootOrchestrator(Config.from_recipe(recipe)) as orch:
            ready(orch)
            dist.barrier()
    finally:
        dist.destroy_process_group()


def main() -> int:
    import torch.multiprocessing as mp

    recipe, world, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mp.spawn(worker, args=(world, recipe, port), nprocs=world, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
