"""Data-parallel training under torchrun, with one orchestrated run across the ranks.

    torchrun --standalone --nproc_per_node=4 examples/ddp_train.py [RECIPE] [--set KEY=VALUE ...]

Every rank enters the same ``with RootOrchestrator(cfg)`` block. Rank 0 creates the run
directory, takes the lock and writes ``logs/run.log``; the other ranks join that
directory and each writes its own ``logs/rank<N>.log`` (their warnings and errors reach
the console too). Inside the block the script starts a process group, deals the data
out with a ``DistributedSampler`` seeded alike on every rank, trains a
``DistributedDataParallel`` model and lets rank 0 alone write the checkpoint. RECIPE
defaults to ``examples/recipes/mini_cnn.yaml``; its ``telemetry.output_dir`` must be a
folder every rank sees (one on a shared filesystem across nodes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from orchestrator_fsm import Config, RootOrchestrator, slurm_master_endpoint, worker_init_fn
from orchestrator_fsm.demo.pipeline import SHAPES, DemoSettings, MiniCNN, make_shapes_dataset

RECIPE = Path(__file__).resolve().parent / "recipes" / "mini_cnn.yaml"


def load_config(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", type=Path, default=RECIPE)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    return Config.from_recipe(args.recipe, overrides=args.overrides)


def fit(orch: RootOrchestrator, device: torch.device) -> float:
    """Train on this rank's share of every epoch; return the last epoch's accuracy
    over all ranks."""
    settings = DemoSettings.from_config(orch.cfg)
    seeds = orch.seed_tree
    log = orch.run_logger  # on every rank: logs/run.log on rank 0, logs/rank<N>.log elsewhere

    # Shared seeds: every rank builds the same dataset and shuffles it the same way,
    # so the sampler's shares never overlap.
    images, labels = make_shapes_dataset(
        settings.num_samples, settings.image_size, settings.noise, seed=seeds.shared_seed("dataset")
    )
    dataset = TensorDataset(images, labels)
    sampler = DistributedSampler(
        dataset,
        num_replicas=orch.world_size,
        rank=orch.rank,
        seed=seeds.shared_seed("data_order"),
    )
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=orch.num_workers,
        worker_init_fn=worker_init_fn,
    )
    log.info("this rank trains on %d of the %d images each epoch", len(sampler), len(dataset))

    torch.manual_seed(seeds.shared_seed("model_init"))  # the same initial weights everywhere
    model = MiniCNN(len(SHAPES), settings.image_size, settings.channels).to(device)
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    optimizer = torch.optim.Adam(ddp.parameters(), lr=settings.learning_rate)

    accuracy = 0.0
    for epoch in range(settings.epochs):
        sampler.set_epoch(epoch)  # a new order each epoch, still the same on every rank
        counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, seen
        for batch, targets in loader:
            batch, targets = batch.to(device), targets.to(device)
            optimizer.zero_grad()
            logits = ddp(batch)
            torch.autograd.backward(nn.functional.cross_entropy(logits, targets))
            optimizer.step()
            counts[0] += (logits.argmax(dim=1) == targets).sum()
            counts[1] += len(targets)
        dist.all_reduce(counts)  # sum over the ranks: every rank now has the global figures
        accuracy = float(counts[0] / counts[1])
        log.info("epoch %d/%d: training accuracy %.4f", epoch + 1, settings.epochs, accuracy)

        if orch.is_main_process:  # one checkpoint per run, not one per rank
            assert orch.paths is not None
            checkpoint = orch.paths.checkpoints / "model.pt"
            partial = checkpoint.with_suffix(".pt.tmp")
            torch.save(model.state_dict(), partial)  # the bare model, without DDP's wrapper
            partial.replace(checkpoint)  # a crash mid-save keeps the previous epoch's
    return accuracy


def main(argv: list[str] | None = None) -> int:
    cfg = load_config(argv)
    with RootOrchestrator(cfg) as orch:
        orch.log_environment_report()
        device = orch.get_device()  # cuda:{local_rank} on a GPU node, else the CPU
        on_gpu = device.type == "cuda"
        # Under `srun` (no torchrun) MASTER_ADDR/MASTER_PORT come from SLURM's node list.
        slurm_master_endpoint()
        dist.init_process_group(
            "nccl" if on_gpu else "gloo",
            rank=orch.rank,  # srun sets no RANK/WORLD_SIZE; the orchestrator read them
            world_size=orch.world_size,
            device_id=device if on_gpu else None,
        )
        try:
            accuracy = fit(orch, device)
        finally:
            dist.destroy_process_group()
    if orch.is_main_process:
        ranks = f"{orch.world_size} rank{'s' * (orch.world_size != 1)}"
        print(f"{ranks}; final training accuracy: {accuracy:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
