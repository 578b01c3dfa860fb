"""Data-parallel training under torchrun, with one orchestrated run across the ranks.

    torchrun --standalone --nproc_per_node=4 examples/ddp_train.py [RECIPE] [--set KEY=VALUE ...]

Every rank enters the same ``with RootOrchestrator(cfg)`` block. Rank 0 creates the run
directory, takes the lock and writes ``logs/run.log``; the other ranks join that
directory and each writes its own ``logs/rank<N>.log`` (their warnings and errors reach
the console too). Inside the block the script starts a process group, deals the data
out with a ``DistributedSampler`` seeded alike on every rank, trains a
``DistributedDataParallel`` model and lets rank 0 alone save the run's checkpoint
(``orch.checkpoints()``) after every epoch. A new attempt of the run (torchrun
``--max-restarts``, a SLURM requeue, ``--resume``) loads the latest and goes on from the
next epoch; a SIGTERM makes every rank leave at the same batch, the last epoch's
checkpoint kept (the epoch in progress is done again on resuming). RECIPE
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

    # Rank 0 saves the run's checkpoint; on a new attempt every rank loads it (a
    # fresh run: None) and goes on after the epoch it holds.
    store = orch.checkpoints(keep=2)
    last = store.load(model=model, optimizer=optimizer)
    first_epoch, accuracy = (0, 0.0) if last is None else (last.epoch + 1, last.extra["accuracy"])
    if last is not None:
        log.info("resuming after epoch %d (%s)", first_epoch, last.path.name)

    for epoch in range(first_epoch, settings.epochs):
        sampler.set_epoch(epoch)  # a new order each epoch, still the same on every rank
        counts = torch.zeros(2, dtype=torch.float64, device=device)  # correct, seen
        for batch, targets in loader:
            if stop_everywhere(orch, device):  # SIGTERM: leave together, unsaved epoch
                return accuracy
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

        # The bare model, without DDP's wrapper; written atomically (a crash mid-save
        # keeps the previous epoch's); a no-op on ranks other than 0.
        store.save(
            (epoch + 1) * len(loader),
            epoch=epoch,
            model=model,
            optimizer=optimizer,
            extra={"accuracy": accuracy},
        )
    return accuracy


def stop_everywhere(orch: RootOrchestrator, device: torch.device) -> bool:
    """Whether a stop (SIGTERM, SIGINT, SIGHUP) reached any rank: all of them leave at
    the same batch, or the others would wait for the one gone in the next gradient sum."""
    flag = torch.tensor([int(orch.stop_requested)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


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
            with orch.cooperative_stop():  # a signal sets orch.stop_requested, raises nothing
                accuracy = fit(orch, device)
        finally:
            dist.destroy_process_group()
    if orch.is_main_process:
        ranks = f"{orch.world_size} rank{'s' * (orch.world_size != 1)}"
        print(f"{ranks}; final training accuracy: {accuracy:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
