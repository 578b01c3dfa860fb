"""Checkpoints of a run: save and load the latest, with every random state, atomically.

A :class:`CheckpointStore` keeps a run's checkpoints in its ``checkpoints/`` folder
(``RootOrchestrator.checkpoints()`` makes one for the run): :meth:`~CheckpointStore.save`
writes the state of the model, optimizer, scheduler, AMP scaler (anything with
``state_dict``/``load_state_dict``), the step, epoch and the caller's extras, and the
random states of Python, NumPy, torch's CPU generator, each CUDA device's (when CUDA
is initialised) and of the generators the caller names (a DataLoader's or a
sampler's ``torch.Generator``, a NumPy ``Generator``, a ``random.Random``);
:meth:`~CheckpointStore.load` finds the latest one and puts all of it back, so that a
resumed loop draws exactly what the uninterrupted one would have drawn.

Files are written to a temporary file beside their final name, fsynced, renamed and the
folder fsynced: a process killed mid-save, or a disk that fills up, leaves the previous
checkpoint whole and still the latest. The last ``keep`` are kept. Each file is a plain
``torch.save`` of a dict of state dicts, tensors and Python values (see
:data:`FORMAT` and the README's "Checkpoints"), readable by ``torch.load`` alone,
``weights_only=True`` included: nothing in it is a class of this package.

Nothing here is called from a signal handler; the caller's loop saves at a step
boundary.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol, TypeAlias

import attrs
import numpy as np
import torch

from orchestrator_fsm._fs import atomic_write_with, fsync_directory, temporary_target
from orchestrator_fsm.layout import checkpoint_file, checkpoint_name_step

__all__ = [
    "DEFAULT_KEEP",
    "FORMAT",
    "Checkpoint",
    "CheckpointStore",
    "RandomSource",
    "Stateful",
    "capture_rng_states",
    "restore_rng_states",
]

#: What a checkpoint file's ``format`` entry says (the layout's version is its number).
FORMAT: Final = "orchestrator-fsm checkpoint 1"
#: How many checkpoints a store keeps when not told otherwise.
DEFAULT_KEEP: Final = 3

# The names save() gives its own keyword arguments in the file's "state".
_NAMED_STATES: Final = ("model", "optimizer", "scheduler", "scaler")

_log = logging.getLogger("orchestrator_fsm.checkpoints")


class Stateful(Protocol):
    """Anything whose state a checkpoint can hold: a module, an optimizer, a learning
    rate scheduler, a ``GradScaler``, a stateful sampler, your own object."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state_dict: Any, /) -> Any: ...


#: A generator whose state a checkpoint keeps: torch's (a DataLoader's or a sampler's),
#: NumPy's or Python's.
RandomSource: TypeAlias = "torch.Generator | np.random.Generator | random.Random"


# -- random states ----------------------------------------------------------------------


def _cuda_in_use() -> bool:
    # Only a CUDA that is already initialised has states worth keeping; asking for
    # them would otherwise initialise it (seconds, and a context on every device).
    initialized: Callable[[], bool] = torch.cuda.is_initialized  # untyped upstream
    return torch.cuda.is_available() and initialized()


def _plain(value: Any) -> Any:
    """``value`` with NumPy arrays as tensors (a NumPy state holds some), so that
    ``torch.load(weights_only=True)`` reads it."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _numpy_again(value: Any) -> Any:
    """The inverse of :func:`_plain`: a NumPy state never holds a tensor of its own."""
    if isinstance(value, torch.Tensor):
        return value.numpy().copy()
    if isinstance(value, dict):
        return {key: _numpy_again(item) for key, item in value.items()}
    return value


def _generator_state(source: RandomSource) -> Any:
    if isinstance(source, torch.Generator):
        return source.get_state()
    if isinstance(source, np.random.Generator):
        return _plain(source.bit_generator.state)
    if isinstance(source, random.Random):
        return source.getstate()
    raise TypeError(
        "expected a torch.Generator, a numpy.random.Generator or a random.Random, "
        f"got {type(source).__name__}"
    )


def _set_generator_state(source: RandomSource, state: Any) -> None:
    if isinstance(source, torch.Generator):
        source.set_state(state)
    elif isinstance(source, np.random.Generator):
        source.bit_generator.state = _numpy_again(state)
    elif isinstance(source, random.Random):
        version, internal, gauss = state
        source.setstate((version, tuple(internal), gauss))
    else:
        raise TypeError(
            "expected a torch.Generator, a numpy.random.Generator or a random.Random, "
            f"got {type(source).__name__}"
        )


def capture_rng_states(generators: Mapping[str, RandomSource] | None = None) -> dict[str, Any]:
    """The random states of this process as a checkpoint keeps them: Python's
    ``random``, NumPy's global generator, torch's CPU generator, each CUDA device's
    (None unless CUDA is initialised) and each of ``generators`` by name."""
    python_version, python_internal, python_gauss = random.getstate()
    return {
        "python": (python_version, python_internal, python_gauss),
        "numpy": _plain(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if _cuda_in_use() else None,
        "generators": {
            name: _generator_state(source) for name, source in (generators or {}).items()
        },
    }


def _restore_cuda(states: Sequence[torch.Tensor] | None, log: logging.Logger) -> None:
    if states is None:
        return
    if not torch.cuda.is_available():
        log.warning(
            "the checkpoint holds the random states of %d CUDA device(s); CUDA is not "
            "available here, so they are not restored",
            len(states),
        )
        return
    devices = torch.cuda.device_count()
    if devices != len(states):
        log.warning(
            "the checkpoint holds the random states of %d CUDA device(s) and this process "
            "sees %d: the first %d are restored",
            len(states),
            devices,
            min(devices, len(states)),
        )
    # Applied at CUDA's initialisation when it has not happened yet.
    for index, state in enumerate(states[:devices]):
        torch.cuda.set_rng_state(state, device=index)


def _check_generators(
    states: Mapping[str, Any], generators: Mapping[str, RandomSource] | None
) -> None:
    saved = states["generators"]
    missing = sorted(set(generators or {}) - set(saved))
    if missing:
        raise KeyError(
            f"the checkpoint holds no state for the generator(s) {', '.join(missing)} "
            f"(it holds: {', '.join(sorted(saved)) or 'none'})"
        )


def restore_rng_states(
    states: Mapping[str, Any],
    generators: Mapping[str, RandomSource] | None = None,
    *,
    log: logging.Logger | None = None,
) -> None:
    """Put back the random states :func:`capture_rng_states` captured, and those of
    ``generators`` (each must be in ``states``; a ``KeyError`` names one that is
    not). CUDA states are restored on the devices this process sees; a warning on
    ``log`` says when there are none or fewer."""
    _check_generators(states, generators)
    saved = states["generators"]
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_again(states["numpy"]))
    torch.set_rng_state(states["torch"])
    _restore_cuda(states["cuda"], log or _log)
    for name, source in (generators or {}).items():
        _set_generator_state(source, saved[name])


# -- what a checkpoint file holds ---------------------------------------------------------

_LEAVES: Final = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    torch.Tensor,
    torch.Size,
    torch.dtype,
    torch.device,
)
_MAPPINGS: Final = (dict, collections.OrderedDict)


def _check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` naming the first value under ``where`` that
    ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(value, _LEAVES):
        return
    if type(value) in _MAPPINGS:
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise TypeError(f"{where} has a key of type {type(key).__name__}: {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a "
        "checkpoint cannot hold (it must be readable by torch.load alone): use plain "
        "numbers, strings, tensors, lists, tuples and dicts"
    )


@attrs.frozen
class Checkpoint:
    """A checkpoint that was loaded: where it was, its step, epoch and the extras saved
    with it, and who saved it (``rank`` None: the run's single checkpoint)."""

    path: Path
    step: int
    epoch: int | None
    extra: Mapping[str, Any]
    rank: int | None
    world_size: int
    run_id: str | None
    saved_at: str


def _os_error(exc: BaseException) -> OSError | None:
    """The ``OSError`` behind ``exc``: torch.save reports a failed write as a
    ``RuntimeError`` whose context is the file's ``OSError``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _write_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    def write(handle: BinaryIO) -> None:
        torch.save(payload, handle)

    try:
        atomic_write_with(path, write)
    except Exception as exc:
        cause = _os_error(exc)
        if cause is None or cause is exc:
            raise
        raise OSError(
            cause.errno,
            f"cannot save the checkpoint ({cause.strerror or cause}); the previous one is kept",
            str(path),
        ) from exc


# -- the store ------------------------------------------------------------------------


class CheckpointStore:
    """The checkpoints of one run in ``folder``, as rank ``rank`` of ``world_size`` sees
    them.

    Rank-0-only (``per_rank`` False, the default): rank 0 saves the run's checkpoint
    (``ckpt-<step>.pt``), :meth:`save` on any other rank does nothing, and every rank
    loads rank 0's file (random states: on rank 0 only, see :meth:`load`). Per-rank:
    each rank saves and loads its own (``ckpt-<step>.rank<N>.pt``), and "latest" is
    the latest step every rank of the world saved. ``keep``: how many of its own
    checkpoints each saver keeps (None: all).
    """

    def __init__(
        self,
        folder: Path | str,
        *,
        rank: int = 0,
        world_size: int = 1,
        keep: int | None = DEFAULT_KEEP,
        per_rank: bool = False,
        run_id: str | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be 1 or more (or None to keep all), got {keep}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        self.folder = Path(folder)
        self.rank = rank
        self.world_size = world_size
        self.keep = keep
        self.per_rank = per_rank
        self.run_id = run_id
        self._log = log or _log

    @property
    def saves(self) -> bool:
        """Whether :meth:`save` writes on this rank (rank 0, or every rank per-rank)."""
        return self.per_rank or self.rank == 0

    @property
    def _own_rank(self) -> int | None:
        # The rank in this store's file names: None for the run's single checkpoint.
        return self.rank if self.per_rank else None

    def _steps_by_rank(self) -> dict[int | None, set[int]]:
        found: dict[int | None, set[int]] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.folder):
                named = checkpoint_name_step(entry.name)
                if named is not None:
                    found.setdefault(named[1], set()).add(named[0])
        return found

    def _latest_step(self, by_rank: Mapping[int | None, set[int]]) -> int | None:
        if not self.per_rank:
            steps = by_rank.get(None, set())
        else:
            every = [by_rank.get(rank, set()) for rank in range(self.world_size)]
            steps = set.intersection(*every)
        return max(steps, default=None)

    def steps(self) -> list[int]:
        """The steps of the checkpoints this store can load, oldest first (per-rank:
        those every rank of the world saved)."""
        by_rank = self._steps_by_rank()
        if not self.per_rank:
            return sorted(by_rank.get(None, set()))
        return sorted(set.intersection(*(by_rank.get(r, set()) for r in range(self.world_size))))

    def latest(self) -> Path | None:
        """The file :meth:`load` would load now: this rank's at the latest step; None
        when there is none."""
        step = self._latest_step(self._steps_by_rank())
        return None if step is None else checkpoint_file(self.folder, step, self._own_rank)

    def save(
        self,
        step: int,
        *,
        epoch: int | None = None,
        model: Stateful | None = None,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
        scaler: Stateful | None = None,
        objects: Mapping[str, Stateful] | None = None,
        generators: Mapping[str, RandomSource] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Save the checkpoint of ``step`` (a number that grows: the latest is the
        highest) and return its path; on a rank that does not save (see the class), do
        nothing and return None.

        It holds the ``state_dict()`` of each of ``model``, ``optimizer``,
        ``scheduler``, ``scaler`` given and of ``objects`` (by name), ``epoch``,
        ``extra`` (plain values: numbers, strings, tensors, lists, tuples, dicts) and
        the random states of the process and of ``generators`` (by name). Call it at a
        step boundary, after the step's work, with the same objects the loop uses; a
        checkpoint of the same step is replaced. Then the oldest checkpoints beyond
        ``keep`` go. Raises ``TypeError`` naming a value a checkpoint cannot hold,
        ``ValueError`` for a clashing name or a negative step, and an ``OSError``
        naming the file when it cannot be written (the disk is full): the previous
        checkpoint is then untouched.
        """
        if not self.saves:
            return None
        path = checkpoint_file(self.folder, step, self._own_rank)
        named = dict(zip(_NAMED_STATES, (model, optimizer, scheduler, scaler), strict=True))
        clashes = sorted(set(objects or {}) & set(_NAMED_STATES))
        if clashes:
            raise ValueError(
                f"objects may not be named {', '.join(clashes)}: pass them as the keyword "
                "arguments of that name"
            )
        states = {
            name: owner.state_dict()
            for name, owner in (named | dict(objects or {})).items()
            if owner is not None
        }
        payload: dict[str, Any] = {
            "format": FORMAT,
            "step": int(step),
            "epoch": None if epoch is None else int(epoch),
            "rank": self._own_rank,
            "world_size": self.world_size,
            "run_id": self.run_id,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "state": states,
            "rng": capture_rng_states(generators),
            "extra": dict(extra or {}),
        }
        _check_plain(payload["extra"], "extra")
        _check_plain(payload["state"], "state")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        _write_checkpoint(path, payload)
        self.prune()
        return path

    def _remove_leftovers(self) -> None:
        # Temporary files of this saver's earlier saves whose process was killed
        # mid-write: no one else writes these names.
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.folder):
                target = temporary_target(entry.name)
                named = None if target is None else checkpoint_name_step(target)
                if named is not None and named[1] == self._own_rank:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def prune(self) -> None:
        """Remove this saver's checkpoints beyond the last ``keep`` (``save`` does it
        after each save). Per-rank, a rank that saved before the others keeps the
        latest step they all saved too; call ``prune`` once every rank has saved (after
        a barrier) to leave each rank exactly its last ``keep``, say at the end of the
        run, where a rank saves no more."""
        if self.keep is None:
            return
        by_rank = self._steps_by_rank()
        own = sorted(by_rank.get(self._own_rank, set()))
        kept = set(own[-self.keep :])
        # Per-rank, the latest step every rank saved stays until a later one is
        # complete, whatever keep says: it is the one a restart would load.
        latest = self._latest_step(by_rank)
        if latest is not None:
            kept.add(latest)
        removed = False
        for step in own:
            if step not in kept:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(checkpoint_file(self.folder, step, self._own_rank))
                removed = True
        if removed:
            fsync_directory(self.folder)

    def load(
        self,
        *,
        model: Stateful | None = None,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
        scaler: Stateful | None = None,
        objects: Mapping[str, Stateful] | None = None,
        generators: Mapping[str, RandomSource] | None = None,
        path: Path | str | None = None,
        restore_rng: bool = True,
        map_location: str | torch.device | Callable[..., Any] = "cpu",
    ) -> Checkpoint | None:
        """Load the latest checkpoint (or the one at ``path``) into the objects given
        and return what it was; None when there is none yet (a fresh run).

        Each of ``model``, ``optimizer``, ``scheduler``, ``scaler`` and ``objects``
        gets its ``load_state_dict`` called with the saved state (a ``KeyError`` names
        one the checkpoint does not hold). Unless ``restore_rng`` is False, the random
        states of Python, NumPy, torch (CPU and the CUDA devices this process sees) and
        of ``generators`` are put back, so the next draws are those the run would have
        made after the save. A rank-0-only checkpoint holds rank 0's random states:
        other ranks load its model and optimizer states but keep their own random
        states (per-rank checkpoints restore every rank's). Tensors are loaded to
        ``map_location`` first (``load_state_dict`` then copies them where the object
        keeps its own). The file is read with ``torch.load(weights_only=True)``; a
        ``ValueError`` names a file it cannot read or that is not a checkpoint.
        """
        target = Path(path) if path is not None else self.latest()
        if target is None:
            self._report_incomplete()
            return None
        try:
            saved = torch.load(target, map_location=map_location, weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError) as exc:
            raise ValueError(f"cannot read the checkpoint {target}: {exc}") from exc
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ValueError(f"{target} is not a checkpoint of this format ({FORMAT!r})")
        own_streams = saved["rank"] is not None or self.rank == 0
        restoring = restore_rng and own_streams
        if restoring:
            # Checked before anything is loaded: a KeyError leaves every object as it was.
            _check_generators(saved["rng"], generators)
        states: Mapping[str, Any] = saved["state"]
        named = dict(zip(_NAMED_STATES, (model, optimizer, scheduler, scaler), strict=True))
        wanted = {
            name: owner
            for name, owner in (named | dict(objects or {})).items()
            if owner is not None
        }
        missing = sorted(set(wanted) - set(states))
        if missing:
            raise KeyError(
                f"the checkpoint {target} holds no state for {', '.join(missing)} "
                f"(it holds: {', '.join(sorted(states)) or 'none'})"
            )
        for name, owner in wanted.items():
            owner.load_state_dict(states[name])
        if restoring:
            restore_rng_states(saved["rng"], generators, log=self._log)
        elif restore_rng:
            self._log.info(
                "rank %d keeps its own random states: the checkpoint %s holds rank 0's",
                self.rank,
                target.name,
            )
        return Checkpoint(
            path=target,
            step=int(saved["step"]),
            epoch=saved["epoch"],
            extra=saved["extra"],
            rank=saved["rank"],
            world_size=int(saved["world_size"]),
            run_id=saved["run_id"],
            saved_at=str(saved["saved_at"]),
        )

    def _report_incomplete(self) -> None:
        if not self.per_rank:
            return
        own = self._steps_by_rank().get(self.rank, set())
        if own:
            self._log.warning(
                "rank %d has checkpoints (latest: step %d) but no step was saved by every "
                "one of the %d ranks: starting from scratch",
                self.rank,
                max(own),
                self.world_size,
            )
