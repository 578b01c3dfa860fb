"""The demo pipeline: a small CNN learns to tell synthetic shapes apart, on the CPU.

:func:`train` is what ``orchestrator-fsm run`` executes when no ``--entry`` is given.
It is also a compact example of a pipeline that leans on the orchestrator for
everything a reproducible run needs:

- the data are drawn from a NumPy generator and the initial weights from torch's,
  both seeded with ``orch.seed_tree.shared_seed``; the DataLoaders shuffle with
  generators from ``make_generator`` and seed their workers with ``worker_init_fn``;
  so two runs of one recipe with ``hardware.reproducible: true`` produce the same
  losses, digit for digit;
- ``orch.num_workers`` and ``orch.get_device()`` decide where the work happens;
- per-epoch metrics go to the run log, to ``orch.log_metrics`` (``metrics.jsonl``, the
  record's ``metrics``) and to ``reports/metrics.csv``, the model to
  ``checkpoints/last.pt``, both rewritten atomically after every epoch; the final
  accuracy to ``orch.log_summary`` (the record's ``summary``);
- it resumes: after every epoch it saves ``orch.checkpoints()`` (the model, Adam, the
  training order's generator and every random state, with the epochs' metrics), a
  SIGTERM/SIGINT/SIGHUP makes it save at the next batch boundary and return (the run
  is recorded as ended by the signal), and a new attempt of the run (``run --resume``,
  a torchrun restart, a SLURM requeue) loads the latest checkpoint, draws the epoch's
  order again and skips the batches done, so it ends with the metrics and weights of
  an uninterrupted run, bit for bit.

Under torchrun (``orch.world_size > 1``) it is data-parallel: it starts a process
group (gloo, or NCCL on CUDA) unless one is running, every rank builds the same
dataset and the same initial weights, a ``DistributedSampler`` seeded with
``shared_seed("data_order")`` deals each rank its own share of every epoch, the model
is wrapped in ``DistributedDataParallel`` and each rank validates its own slice of
the validation images. Losses and accuracies are summed over the ranks, so every rank
logs the global figures; only rank 0 writes the metrics and the checkpoint and prints
the final accuracy. A process group the demo started is destroyed when it returns.

Recipe keys it reads (all optional; the defaults train in a few seconds on 2 cores),
declared as its schema (:mod:`orchestrator_fsm.demo.schema`), so any other key in these
sections, or a value out of range, is a config error before the run starts:

=========================  ========  ==================================================
key                        default   meaning
=========================  ========  ==================================================
``dataset.num_samples``    2048      images generated (train + validation)
``dataset.image_size``     16        side in pixels (a multiple of 4, at least 8)
``dataset.noise``          0.2       standard deviation of the Gaussian pixel noise
``dataset.val_fraction``   0.25      share of the images held out for validation
``architecture.channels``  8         channels of the first convolution (doubled next)
``training.epochs``        3         passes over the training images
``training.batch_size``    32        images per optimisation step
``training.learning_rate`` 0.01      Adam's step size (``training.lr`` is read too)
=========================  ========  ==================================================
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Subset,
    TensorDataset,
)

from orchestrator_fsm._fs import atomic_write_bytes, atomic_write_text
from orchestrator_fsm._text import counted
from orchestrator_fsm.checkpoints import CheckpointStore
from orchestrator_fsm.config.schema import pipeline_schema
from orchestrator_fsm.demo.schema import DEMO_SCHEMA, DemoArchitecture, DemoDataset, DemoTraining
from orchestrator_fsm.distributed import slurm_master_endpoint
from orchestrator_fsm.errors import ConfigError, LifecycleError
from orchestrator_fsm.phases.determinism import make_generator, worker_init_fn
from orchestrator_fsm.progress_bar import ProgressBar

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.orchestrator import RootOrchestrator

__all__ = [
    "CHECKPOINT_FILE_NAME",
    "METRICS_COLUMNS",
    "METRICS_FILE_NAME",
    "SHAPES",
    "DemoResult",
    "DemoSettings",
    "EpochMetrics",
    "MiniCNN",
    "make_shapes_dataset",
    "train",
]

#: The classes of the synthetic dataset, in label order.
SHAPES: Final = ("square", "disk", "cross", "x")

METRICS_FILE_NAME: Final = "metrics.csv"
CHECKPOINT_FILE_NAME: Final = "last.pt"
METRICS_COLUMNS: Final = ("epoch", "train_loss", "val_loss", "val_accuracy", "seconds")

_log = logging.getLogger("orchestrator_fsm.demo")

# Half the width of a cross's or an x's stroke, in pixels.
_STROKE: Final = 0.75


@attrs.frozen
class DemoSettings:
    """The demo's knobs, read from the recipe's pipeline sections and checked."""

    num_samples: int = 2048
    image_size: int = 16
    noise: float = 0.2
    val_fraction: float = 0.25
    channels: int = 8
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 0.01

    @property
    def val_count(self) -> int:
        """How many of the generated images are held out for validation."""
        return max(1, round(self.num_samples * self.val_fraction))

    @classmethod
    def from_config(cls, cfg: Config) -> DemoSettings:
        """The settings ``cfg`` asks for, defaults filling what it leaves out.

        The sections are structured by the demo's schema (:data:`DEMO_SCHEMA`) unless
        they already were (``orchestrator-fsm run`` does it before the run starts).
        Raises ``ConfigError`` listing every unusable value with its dotted path.
        """
        dataset, architecture, training = (
            cfg.dataset.typed,
            cfg.architecture.typed,
            cfg.training.typed,
        )
        if not (
            isinstance(dataset, DemoDataset)
            and isinstance(architecture, DemoArchitecture)
            and isinstance(training, DemoTraining)
        ):
            return cls.from_config(cfg.with_schema(DEMO_SCHEMA))
        settings = cls(
            num_samples=dataset.num_samples,
            image_size=dataset.image_size,
            noise=dataset.noise,
            val_fraction=dataset.val_fraction,
            channels=architecture.channels,
            epochs=training.epochs,
            batch_size=training.batch_size,
            learning_rate=training.effective_learning_rate,
        )
        if settings.num_samples - settings.val_count < 1:
            source = str(cfg.source) if cfg.source is not None else None
            problem = (
                "dataset.num_samples",
                f"expected enough images for both a training and a validation split, "
                f"found {settings.num_samples} (validation takes {settings.val_count})",
            )
            raise ConfigError(
                f"the demo pipeline cannot use this config: {problem[0]}: {problem[1]}",
                problems=[problem],
                source=source,
            )
        return settings


@attrs.frozen
class EpochMetrics:
    """What one epoch achieved; one row of ``metrics.csv``."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    seconds: float

    def csv_row(self) -> list[str]:
        # Losses keep every digit: reproducibility is checked by comparing them.
        return [
            str(self.epoch),
            repr(self.train_loss),
            repr(self.val_loss),
            repr(self.val_accuracy),
            f"{self.seconds:.3f}",
        ]


@attrs.frozen
class DemoResult:
    """What :func:`train` returns: the global metrics on every rank. The paths are None
    on ranks other than 0, which write neither file."""

    final_accuracy: float
    epochs: tuple[EpochMetrics, ...]
    metrics_path: Path | None
    checkpoint_path: Path | None
    #: The step a stop (SIGTERM, SIGINT, SIGHUP) ended training at, its checkpoint
    #: saved; None when training ran to its end.
    stopped_at: int | None = None


@attrs.frozen
class _Place:
    """Where training starts: the epoch, the batches of it already done and their
    sums, and the epochs before it (a fresh run: epoch 1, nothing done)."""

    epoch: int = 1
    batches_done: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    history: list[EpochMetrics] = attrs.field(factory=list)


def _place_extra(
    epoch: int,
    batches_done: int,
    epoch_order: torch.Tensor,
    loss_sum: float,
    seen: int,
    history: list[EpochMetrics],
) -> dict[str, Any]:
    """What a checkpoint holds beside the states, to resume at ``epoch``'s batch
    ``batches_done`` (``epoch_order``: the order generator's state when the epoch began)."""
    return {
        "epoch": epoch,
        "batches_done": batches_done,
        "epoch_order": epoch_order,
        "loss_sum": loss_sum,
        "seen": seen,
        "history": [attrs.asdict(row) for row in history],
    }


def _resume(
    store: CheckpointStore,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    order: torch.Generator,
    log: logging.Logger,
) -> _Place:
    """Load the run's latest checkpoint (a new attempt of a stopped, killed or requeued
    run) into the model, the optimizer, the order generator and every random state, and
    say where to go on; a fresh run starts at epoch 1."""
    checkpoint = store.load(model=model, optimizer=optimizer, generators={"order": order})
    if checkpoint is None:
        return _Place()
    extra = checkpoint.extra
    place = _Place(
        epoch=int(extra["epoch"]),
        batches_done=int(extra["batches_done"]),
        loss_sum=float(extra["loss_sum"]),
        seen=int(extra["seen"]),
        history=[EpochMetrics(**row) for row in extra["history"]],
    )
    # The order as it was when the epoch began (a stop at a batch has drawn the epoch's
    # order since): the loop draws it again, then skips the batches done.
    order.set_state(extra["epoch_order"])
    log.info(
        "demo: resuming from %s (step %d: epoch %d, %s done)",
        checkpoint.path.name,
        checkpoint.step,
        place.epoch,
        counted(place.batches_done, "batch", "batches"),
    )
    return place


def _shape_mask(
    shape: str, size: int, cx: float, cy: float, radius: float
) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = np.abs(xx - cx), np.abs(yy - cy)
    mask: npt.NDArray[np.bool_]
    if shape == "square":  # outline only, so that it differs from the disk in more than size
        edge = np.maximum(dx, dy)
        mask = (edge <= radius) & (edge >= radius - 1.0)
    elif shape == "disk":
        mask = dx**2 + dy**2 <= radius**2
    elif shape == "cross":
        mask = ((dx <= _STROKE) & (dy <= radius)) | ((dy <= _STROKE) & (dx <= radius))
    elif shape == "x":
        mask = (np.abs(dx - dy) <= _STROKE) & (dx <= radius)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    return mask


def make_shapes_dataset(
    num_samples: int, image_size: int, noise: float, *, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of the shapes in ``SHAPES`` with Gaussian noise, and their labels.

    Returns ``(images, labels)``: float32 of shape ``(num_samples, 1, image_size,
    image_size)`` and int64 of shape ``(num_samples,)``. Classes are balanced (to
    within one image) and in random order; every shape gets a random centre, size
    and brightness. The same arguments give the same tensors, on any machine.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_samples) % len(SHAPES))
    images = np.empty((num_samples, 1, image_size, image_size), dtype=np.float32)
    min_radius = max(2, image_size // 5)
    max_radius = max(min_radius, image_size // 3)
    for index, label in enumerate(labels):
        radius = float(rng.integers(min_radius, max_radius + 1))
        cx, cy = rng.uniform(radius, image_size - 1 - radius, size=2)
        brightness = rng.uniform(0.7, 1.0)
        mask = _shape_mask(SHAPES[label], image_size, float(cx), float(cy), radius)
        images[index, 0] = mask * brightness
    images += rng.normal(0.0, noise, size=images.shape).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


class MiniCNN(nn.Module):
    """Two convolution + pooling blocks and a two-layer classifier."""

    def __init__(self, num_classes: int, image_size: int, channels: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 2 * channels * (image_size // 4) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 32),
            nn.ReLU(),
            nn.Linear(32, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(images))
        return logits


def _write_metrics(path: Path, history: list[EpochMetrics]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRICS_COLUMNS)
    writer.writerows(row.csv_row() for row in history)
    atomic_write_text(path, buffer.getvalue())


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: list[EpochMetrics],
    settings: DemoSettings,
    config_hash: str,
) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "epoch": history[-1].epoch,
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "metrics": [attrs.asdict(row) for row in history],
            "settings": attrs.asdict(settings),
            "classes": list(SHAPES),
            "config_hash": config_hash,
        },
        buffer,
    )
    # Written to a temporary file and renamed: a crash mid-save keeps the previous epoch's.
    atomic_write_bytes(path, buffer.getvalue())


def _evaluate(
    model: nn.Module, loader: DataLoader[tuple[torch.Tensor, ...]], device: torch.device
) -> tuple[float, float, float]:
    """Summed loss, correct predictions and images seen (sums, so ranks can add them)."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
            seen += len(labels)
    return loss_sum, float(correct), float(seen)


@attrs.frozen
class _Ranks:
    """The processes training together: ``world_size`` of them, this one ``rank``."""

    rank: int
    world_size: int
    # Where the values to sum must live: NCCL reduces CUDA tensors only.
    reduce_device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def total(self, *values: float) -> tuple[float, ...]:
        """Each of ``values`` summed over the ranks (as given, on a single process)."""
        if not self.distributed:
            return values
        summed = torch.tensor(values, dtype=torch.float64, device=self.reduce_device)
        dist.all_reduce(summed)
        return tuple(float(value) for value in summed.tolist())

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank: every rank stops at the same step, or
        the others would wait for it in the next step's gradient reduction."""
        if not self.distributed:
            return flag
        raised = torch.tensor([int(flag)], device=self.reduce_device)
        dist.all_reduce(raised, op=dist.ReduceOp.MAX)
        return bool(raised.item())


def _group_running() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextmanager
def _process_group(orch: RootOrchestrator, device: torch.device) -> Iterator[_Ranks]:
    """The ranks of this run; starts (and at the end destroys) a process group when
    the run has more than one rank and none is running yet."""
    started = False
    if orch.world_size > 1 and not _group_running():
        cuda = device.type == "cuda"
        slurm_master_endpoint()  # under srun, where no launcher set MASTER_ADDR/PORT
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            rank=orch.rank,
            world_size=orch.world_size,
            device_id=device if cuda else None,
        )
        started = True
    try:
        if not _group_running():
            yield _Ranks(rank=0, world_size=1, reduce_device=device)
            return
        if (dist.get_rank(), dist.get_world_size()) != (orch.rank, orch.world_size):
            raise LifecycleError(
                f"the running process group has this process as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, but the run is rank {orch.rank} of "
                f"{orch.world_size}"
            )
        on_cuda = dist.get_backend() == "nccl"
        yield _Ranks(
            rank=orch.rank,
            world_size=orch.world_size,
            reduce_device=device if on_cuda else torch.device("cpu"),
        )
    finally:
        if started:
            dist.destroy_process_group()


def _build_model(settings: DemoSettings, seed: int) -> MiniCNN:
    """The initial model, the same for one ``seed`` on every rank. Drawn from a fork of
    torch's CPU generator, so the global one is left as the lifecycle seeded it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MiniCNN(len(SHAPES), settings.image_size, settings.channels)


@pipeline_schema(**DEMO_SCHEMA)
def train(orch: RootOrchestrator, *, console: Console | None = None) -> DemoResult:
    """Train :class:`MiniCNN` on the synthetic shapes inside a running lifecycle.

    ``orch`` must be at READY (inside its with-block); ``train`` makes the phase 7
    environment report first. Progress is an ``orch.progress`` bar on the run's console
    (on ``console`` when one is given; shown by rank 0 only, a plain line when not a
    terminal), the final accuracy is printed on ``console`` (stdout by default),
    per-epoch metrics go to the run log
    and, on rank 0, to ``orch.log_metrics`` (step: the epoch), ``reports/metrics.csv`` and
    ``checkpoints/last.pt``, the final accuracy to ``orch.log_summary``. With more
    than one rank it trains data-parallel (see the module's description) and every
    rank returns the global metrics. Raises ``ConfigError`` when the recipe's demo
    settings are unusable.
    """
    orch.log_environment_report()
    settings = DemoSettings.from_config(orch.cfg)
    device = orch.get_device()
    with _process_group(orch, device) as ranks:
        return _train(orch, settings, device, ranks, console)


def _train(
    orch: RootOrchestrator,
    settings: DemoSettings,
    device: torch.device,
    ranks: _Ranks,
    console: Console | None,
) -> DemoResult:
    log = orch.run_logger or _log
    seeds = orch.seed_tree

    # One dataset for every rank: the sampler below splits it between them.
    images, labels = make_shapes_dataset(
        settings.num_samples,
        settings.image_size,
        settings.noise,
        seed=seeds.shared_seed("dataset"),
    )
    val_count = settings.val_count
    val_set = TensorDataset(images[:val_count], labels[:val_count])
    train_set = TensorDataset(images[val_count:], labels[val_count:])
    workers = orch.num_workers
    loader_options: dict[str, Any] = {
        "batch_size": settings.batch_size,
        "num_workers": workers,
        "worker_init_fn": worker_init_fn,
        "persistent_workers": workers > 0,
    }
    seed = orch.cfg.training.seed
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] | None = None
    if ranks.distributed:
        sampler = DistributedSampler(
            train_set,
            num_replicas=ranks.world_size,
            rank=ranks.rank,
            shuffle=True,
            seed=seeds.shared_seed("data_order"),
        )
        # Every rank validates its own images, none twice (a sampler would pad).
        val_shard: TensorDataset | Subset[tuple[torch.Tensor, ...]] = Subset(
            val_set, range(ranks.rank, val_count, ranks.world_size)
        )
    else:
        val_shard = val_set
    # The training order's own generator (the loader's also seeds its workers, when
    # they start): a checkpoint keeps it, so a resumed run shuffles as the first did.
    order = make_generator(seed, purpose="train_order", rank=orch.rank)
    train_loader = DataLoader(
        train_set,
        sampler=sampler if sampler is not None else RandomSampler(train_set, generator=order),
        generator=make_generator(seed, purpose="train_loader", rank=orch.rank),
        **loader_options,
    )
    val_loader = DataLoader(
        val_shard,
        shuffle=False,
        generator=make_generator(seed, purpose="val_loader", rank=orch.rank),
        **loader_options,
    )

    module = _build_model(settings, seeds.shared_seed("model_init")).to(device)
    model: nn.Module = module
    if ranks.distributed:
        model = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    paths = orch.paths if orch.is_main_process else None
    metrics_path = paths.reports / METRICS_FILE_NAME if paths is not None else None
    checkpoint_path = paths.checkpoints / CHECKPOINT_FILE_NAME if paths is not None else None
    log.info(
        "demo: %d training and %d validation images of %dx%d px, %s classes; %s on %s with %s",
        len(train_set),
        len(val_set),
        settings.image_size,
        settings.image_size,
        "/".join(SHAPES),
        counted(settings.epochs, "epoch"),
        device,
        counted(workers, "loader worker"),
    )
    if sampler is not None:
        log.info(
            "demo: rank %d of %d trains on %d and validates %d images per epoch",
            ranks.rank,
            ranks.world_size,
            len(sampler),
            len(val_shard),
        )

    steps_per_epoch = len(train_loader)
    total_steps = settings.epochs * steps_per_epoch
    # Each rank keeps its own with several (its share of the epoch's sums is its own);
    # one file is enough: it holds everything the next attempt needs.
    store = orch.checkpoints(keep=1, per_rank=ranks.distributed)
    place = _resume(store, module, optimizer, order, log)
    history = place.history
    stopped_at: int | None = None
    bar: ProgressBar[None] = orch.progress(
        total=total_steps, description="training", console=console
    )
    with bar, orch.cooperative_stop():
        bar.advance((place.epoch - 1) * steps_per_epoch + place.batches_done)
        for epoch in range(place.epoch, settings.epochs + 1):
            started = time.perf_counter()
            bar.update(description=f"epoch {epoch}/{settings.epochs}")
            if sampler is not None:
                sampler.set_epoch(epoch)  # a new order each epoch, the same on every rank
            # The order is drawn when the epoch's iteration starts: a stop mid-epoch
            # keeps the state it was drawn from, to draw it again on resuming.
            epoch_order = order.get_state()
            model.train()
            resuming = epoch == place.epoch
            skip = place.batches_done if resuming else 0
            loss_sum, seen = (place.loss_sum, place.seen) if resuming else (0.0, 0)
            for batch, (batch_images, batch_labels) in enumerate(train_loader):
                if batch < skip:  # done before the stop this attempt resumes from
                    continue
                if ranks.any_rank(orch.stop_requested):  # a step boundary: the state is whole
                    stopped_at = (epoch - 1) * steps_per_epoch + batch
                    store.save(
                        stopped_at,
                        epoch=epoch,
                        model=module,
                        optimizer=optimizer,
                        generators={"order": order},
                        extra=_place_extra(epoch, batch, epoch_order, loss_sum, seen, history),
                    )
                    log.info(
                        "demo: stopped at step %d (epoch %d, batch %d)", stopped_at, epoch, batch
                    )
                    break
                batch_images, batch_labels = batch_images.to(device), batch_labels.to(device)
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(batch_images), batch_labels)
                torch.autograd.backward(loss)  # Tensor.backward is untyped
                optimizer.step()
                loss_sum += loss.item() * len(batch_labels)
                seen += len(batch_labels)
                bar.advance(loss=loss.item())
            if stopped_at is not None:
                break
            train_loss_sum, train_seen, val_loss_sum, correct, val_seen = ranks.total(
                loss_sum, seen, *_evaluate(model, val_loader, device)
            )
            row = EpochMetrics(
                epoch=epoch,
                train_loss=train_loss_sum / train_seen,
                val_loss=val_loss_sum / val_seen,
                val_accuracy=correct / val_seen,
                seconds=time.perf_counter() - started,
            )
            history.append(row)
            log.info(
                "epoch %d/%d train_loss=%.6f val_loss=%.6f val_accuracy=%.4f (%.2fs)",
                row.epoch,
                settings.epochs,
                row.train_loss,
                row.val_loss,
                row.val_accuracy,
                row.seconds,
            )
            if orch.is_main_process:
                orch.log_metrics(
                    {
                        "train_loss": row.train_loss,
                        "val_loss": row.val_loss,
                        "val_accuracy": row.val_accuracy,
                        "epoch_seconds": row.seconds,
                    },
                    step=epoch,
                )
            if metrics_path is not None and checkpoint_path is not None:
                _write_metrics(metrics_path, history)
                _save_checkpoint(
                    checkpoint_path, module, optimizer, history, settings, orch.cfg.config_hash()
                )
            store.save(
                epoch * steps_per_epoch,
                epoch=epoch + 1,
                model=module,
                optimizer=optimizer,
                generators={"order": order},
                extra=_place_extra(epoch + 1, 0, order.get_state(), 0.0, 0, history),
            )
            if ranks.distributed:
                # Once every rank saved this epoch, each keeps only its own: the same
                # files whichever rank saved first.
                dist.barrier()
                store.prune()

    if stopped_at is not None:
        return DemoResult(
            final_accuracy=history[-1].val_accuracy if history else float("nan"),
            epochs=tuple(history),
            metrics_path=metrics_path,
            checkpoint_path=checkpoint_path,
            stopped_at=stopped_at,
        )
    final = history[-1].val_accuracy
    log.info("demo: final validation accuracy %.4f", final)
    if orch.is_main_process:
        orch.log_summary({"final_accuracy": final})
        (console or Console()).print(
            f"final validation accuracy: {final:.1%} "
            f"({round(final * val_count)}/{val_count} images)",
            markup=False,
            highlight=False,
        )
    return DemoResult(
        final_accuracy=final,
        epochs=tuple(history),
        metrics_path=metrics_path,
        checkpoint_path=checkpoint_path,
    )
