"""An observer that writes each run's metrics as TensorBoard scalars
(``pip install orchestrator-fsm[tensorboard]``).

Name it in the recipe (``telemetry.observers: [tensorboard]``) or pass
``TensorBoardObserver(cfg)`` in ``observers=``. Only rank 0 writes, once the run is
READY (its lock held): a ``torch.utils.tensorboard.SummaryWriter`` into
``<run_dir>/tensorboard/``, every
``log_metrics`` value as a scalar at its step (a call without a step takes the number
of calls so far), every ``log_summary`` value as ``summary/<name>`` at step 0; the
events file is flushed every ``flush_s`` seconds by the writer and closed at the end.
TensorBoard is imported only when a run starts, so ``import orchestrator_fsm`` never
imports it. ``tensorboard --logdir <output_dir>`` shows every run of the output folder.

A later attempt of the run (``run --resume``, a restart, a requeue) writes a new events
file into the same folder and goes on from the steps already there, without a second
point at any step: it reads, per tag, the last step the folder holds and writes a value
only at a later step (a resumed loop redoing steps after its checkpoint: those keep the
earlier attempt's point), and its calls without a step go on after the last step held.
Every reader of the folder (TensorBoard's Python loader, its fast data server, pandas
exports) then sees one point per step; ``purge_step`` would hide the earlier points only
from readers that honour it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from orchestrator_fsm.lifecycle.table import LifecycleState
from orchestrator_fsm.observers import Observer

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.lifecycle.machine import TransitionRecord
    from orchestrator_fsm.lifecycle.record import RunRecord

__all__ = ["TENSORBOARD_DIR", "TensorBoardObserver", "steps_written"]

#: The folder of the run directory the events are written to.
TENSORBOARD_DIR: Final = "tensorboard"
_SUMMARY_PREFIX: Final = "summary/"


def steps_written(folder: Path) -> dict[str, int]:
    """Per scalar tag, the last step the events files in ``folder`` hold (a record cut
    short by a killed writer ends its file's reading); empty when there are none."""
    from tensorboard.backend.event_processing.event_file_loader import (  # type: ignore[import-untyped]
        LegacyEventFileLoader,
    )

    last: dict[str, int] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            step = int(event.step)
            for value in event.summary.value:
                tag = str(value.tag)
                last[tag] = max(last.get(tag, step), step)
    return last


class TensorBoardObserver(Observer):
    """Writes the run's metrics to ``<run_dir>/tensorboard/`` (rank 0 only)."""

    def __init__(self, cfg: Config, *, flush_s: float = 10.0) -> None:
        if isinstance(flush_s, bool) or not isinstance(flush_s, (int, float)) or flush_s <= 0:
            raise ValueError(f"flush_s must be a number > 0, got {flush_s!r}")
        if importlib.util.find_spec("tensorboard") is None:
            raise ModuleNotFoundError(
                "tensorboard is not installed; pip install 'orchestrator-fsm[tensorboard]'"
            )
        self._flush_s = float(flush_s)
        self._writer: Any = None
        self._calls = 0
        self._written: dict[str, int] = {}
        self._started: RunRecord | None = None

    def run_started(self, record: RunRecord) -> None:
        # The writer is opened once the run is READY, its lock held: a launch refused at
        # the lock writes no events.
        if record.rank in (None, 0):
            self._started = record

    def transition(self, step: TransitionRecord) -> None:
        started = self._started
        if started is not None and step.ok and step.dest is LifecycleState.READY:
            self._started = None
            self._open(started)

    def _open(self, record: RunRecord) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = record.root / TENSORBOARD_DIR
        if len(record.attempts) > 1:
            self._written = steps_written(folder)
            steps = [at for tag, at in self._written.items() if not tag.startswith(_SUMMARY_PREFIX)]
            self._calls = max(steps, default=0)
        self._writer = SummaryWriter(log_dir=str(folder), flush_secs=max(1, round(self._flush_s)))

    def metrics(self, values: Mapping[str, float], step: int | None) -> None:
        if self._writer is None:
            return
        self._calls += 1
        at = self._calls if step is None else step
        for name, value in values.items():
            if at > self._written.get(name, -1):
                self._writer.add_scalar(name, float(value), global_step=at)

    def summary(self, values: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(f"summary/{name}", float(value), global_step=0)

    def run_ended(self, record: RunRecord) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()  # flushes what is pending
