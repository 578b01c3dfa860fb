"""An observer that writes each run's metrics as TensorBoard scalars
(``pip install orchestrator-fsm[tensorboard]``).

Name it in the recipe (``telemetry.observers: [tensorboard]``) or pass
``TensorBoardObserver(cfg)`` in ``observers=``. Only rank 0 writes: a
``torch.utils.tensorboard.SummaryWriter`` into ``<run_dir>/tensorboard/``, every
``log_metrics`` value as a scalar at its step (a call without a step takes the number
of calls so far), every ``log_summary`` value as ``summary/<name>`` at step 0; the
events file is flushed every ``flush_s`` seconds by the writer and closed at the end.
TensorBoard is imported only when a run starts, so ``import orchestrator_fsm`` never
imports it. ``tensorboard --logdir <output_dir>`` shows every run of the output folder.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from orchestrator_fsm.observers import Observer

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.lifecycle.record import RunRecord

__all__ = ["TENSORBOARD_DIR", "TensorBoardObserver"]

#: The folder of the run directory the events are written to.
TENSORBOARD_DIR: Final = "tensorboard"


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

    def run_started(self, record: RunRecord) -> None:
        if record.rank not in (None, 0):
            return
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(
            log_dir=str(record.root / TENSORBOARD_DIR), flush_secs=max(1, round(self._flush_s))
        )

    def metrics(self, values: Mapping[str, float], step: int | None) -> None:
        if self._writer is None:
            return
        self._calls += 1
        at = self._calls if step is None else step
        for name, value in values.items():
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
