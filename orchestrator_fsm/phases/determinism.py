"""Phase 1 — determinism: seed every global generator and pin the reproducibility flags.

``set_seed`` is the default seeding step; ``DeterminismState`` is its undo. The seed
tree (``SeedTree``, ``make_generator``, ``worker_init_fn``) hands out the *other* seeds a
run needs — per purpose, per rank or shared by all ranks, per DataLoader worker —
derived from the one recipe seed with ``numpy.random.SeedSequence`` so they are
independent, stable across Python processes and never drawn from (hence never
disturbing) the global generators.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import os
import random
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, SupportsIndex

import attrs
import numpy as np
import torch

from orchestrator_fsm._process import undoable
from orchestrator_fsm._system import mps_available
from orchestrator_fsm.distributed import get_rank

if TYPE_CHECKING:
    from orchestrator_fsm.lifecycle.machine import Undo
    from orchestrator_fsm.phases.context import RunContext

__all__ = [
    "CUBLAS_WORKSPACE_CONFIG",
    "STANDARD_SHARED_PURPOSES",
    "DeterminismState",
    "SeedTree",
    "last_seed_sequence",
    "make_generator",
    "set_deterministic_algorithms",
    "set_seed",
    "step",
    "worker_init_fn",
]

logger = logging.getLogger(__name__)

#: The cuBLAS workspace setting strict mode exports; one of the two values NVIDIA
#: documents as making cuBLAS reductions deterministic.
CUBLAS_WORKSPACE_CONFIG: Final = ":4096:8"
_DETERMINISTIC_CUBLAS_CONFIGS: Final = frozenset({":4096:8", ":16:8"})
_CUBLAS_ENV: Final = "CUBLAS_WORKSPACE_CONFIG"
_HASH_SEED_ENV: Final = "PYTHONHASHSEED"
_INDUCTOR_DETERMINISTIC_ENV: Final = "TORCHINDUCTOR_DETERMINISTIC"
_INDUCTOR_CONFIG_MODULE: Final = "torch._inductor.config"

# Python reads PYTHONHASHSEED once, when the interpreter starts, and this module is
# imported before any lifecycle step runs; so the value seen here is the one that
# governs str/bytes hashing in this process. The live variable cannot be trusted for
# that: strict set_seed exports it for child processes.
_HASH_SEED_AT_START: Final = os.environ.get(_HASH_SEED_ENV)

_SEED_LIMIT: Final = 2**32
_PURPOSE_KIND: Final = 0
_WORKER_KIND: Final = 1
_WORKER_INIT_KIND: Final = 2
_SHARED_KIND: Final = 3
#: Purposes whose shared seed ``SeedTree.as_dict`` always lists.
STANDARD_SHARED_PURPOSES: Final = ("data_order", "model_init")

# The seed of the last ``set_seed`` call, from which ``last_seed_sequence`` rebuilds the
# recorded SeedSequence. Module state on purpose: ``DeterminismState`` restores it.
_recorded_seed: int | None = None


def _validate_seed(seed: object, *, name: str = "seed") -> int:
    """``seed`` as a plain int, or a ValueError saying what a seed must be."""
    if isinstance(seed, bool) or not isinstance(seed, SupportsIndex):
        raise ValueError(
            f"{name} must be an integer in [0, 2**32), got {type(seed).__name__} {seed!r}"
        )
    value = operator.index(seed)
    if not 0 <= value < _SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**32), got {value}")
    return value


def _validate_index(value: object, *, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise ValueError(f"{name} must be an integer >= 0, got {type(value).__name__} {value!r}")
    index = operator.index(value)
    if index < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {index}")
    return index


def set_deterministic_algorithms(mode: bool, *, warn_only: bool = False) -> None:
    """What ``torch.use_deterministic_algorithms(mode, warn_only=...)`` does, minus its import.

    torch's function sets ``torch._inductor.config.deterministic`` and then the C-level
    switch; importing that config module pulls in TorchInductor and TorchDynamo, about a
    second on a first call. When the module is already loaded it is set directly, as
    torch does. When it is not, ``TORCHINDUCTOR_DETERMINISTIC`` is exported for
    ``mode=True`` instead: inductor reads that variable when it is first imported, so a
    later ``torch.compile`` sees the same setting. Falls back to torch's own function
    when this torch has no C-level setter.
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # pragma: no cover - every torch this package supports has it
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
        return
    inductor_config = sys.modules.get(_INDUCTOR_CONFIG_MODULE)
    if inductor_config is not None:
        setattr(inductor_config, "deterministic", mode)  # noqa: B010 - a module from sys.modules
    elif mode:
        os.environ[_INDUCTOR_DETERMINISTIC_ENV] = "1"
    setter(mode, warn_only=warn_only)


def set_seed(seed: int, strict: bool = False, warn_only: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU, every CUDA device, MPS) with ``seed``.

    Each global generator is seeded exactly as ``random.seed(seed)``,
    ``np.random.seed(seed)`` and ``torch.manual_seed(seed)`` would, and nothing is drawn
    from them afterwards, so the first draws equal those of the plain calls. A
    ``numpy.random.SeedSequence(seed)`` is recorded for :func:`last_seed_sequence`.
    cuDNN is always put in deterministic, non-benchmarking mode.

    ``strict`` additionally makes torch raise on nondeterministic operations (only warn
    when ``warn_only``; ``warn_only`` has no effect without ``strict``), exports
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (a value already set to one of NVIDIA's two
    deterministic settings is kept) and turns TF32 off for cuBLAS matmuls and cuDNN. The
    variable only counts if set before CUDA initialises; a warning is logged when CUDA
    already has. It also makes TorchInductor deterministic, without importing it (see
    :func:`set_deterministic_algorithms`). Strict mode also exports
    ``PYTHONHASHSEED=<seed>``, which seeds string hashing in child processes
    (DataLoader workers started by spawn, subprocesses).

    Strict mode issues a ``UserWarning`` when this interpreter started with a
    ``PYTHONHASHSEED`` other than ``seed``: its own string hashing was fixed at
    start and cannot be changed from here. It issues another when MPS is available:
    torch has no deterministic implementation of every MPS operation, so runs on MPS
    are only partly reproducible. These two are warnings, not log lines: seeding comes
    before the run's logging exists, and a log line as well would print twice.

    Undo with ``undoable(lambda: set_seed(...), DeterminismState.capture())`` from
    :mod:`orchestrator_fsm._process` (flags and environment), as phase 1 does. Raises
    ``ValueError`` unless ``0 <= seed < 2**32``.
    """
    global _recorded_seed
    seed = _validate_seed(seed)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Current torch.manual_seed seeds CUDA and MPS as well; the explicit calls state the
    # contract instead of relying on that.
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if torch.backends.mps.is_available():
        torch.mps.manual_seed(seed)
    _recorded_seed = seed

    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

    if not strict:
        return

    current = os.environ.get(_CUBLAS_ENV)
    if current not in _DETERMINISTIC_CUBLAS_CONFIGS:
        os.environ[_CUBLAS_ENV] = CUBLAS_WORKSPACE_CONFIG
        if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            logger.warning(
                "CUDA was already initialised when %s was set to %r (it was %r); cuBLAS "
                "reads it only at initialisation, so matmuls may stay nondeterministic in "
                "this process. Export %s=%s before starting Python to be sure.",
                _CUBLAS_ENV,
                CUBLAS_WORKSPACE_CONFIG,
                current,
                _CUBLAS_ENV,
                CUBLAS_WORKSPACE_CONFIG,
            )

    set_deterministic_algorithms(True, warn_only=warn_only)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    os.environ[_HASH_SEED_ENV] = str(seed)
    if str(seed) != _HASH_SEED_AT_START:
        started_with = "unset" if _HASH_SEED_AT_START is None else repr(_HASH_SEED_AT_START)
        warnings.warn(
            f"PYTHONHASHSEED was {started_with} when this interpreter started, not "
            f"{str(seed)!r}: the iteration order of sets of str/bytes (and of anything "
            "derived from their hashes) may differ between runs. Python reads it only at "
            f"interpreter start; export PYTHONHASHSEED={seed} before launching for full "
            "reproducibility (child processes already get it).",
            UserWarning,
            stacklevel=2,
        )
    if mps_available():
        warnings.warn(
            "MPS determinism is partial: torch has no deterministic implementation of "
            "every MPS operation, so results on the mps device may differ between runs "
            "even in strict mode. Use the CPU (or CUDA) for bit-exact reproducibility.",
            UserWarning,
            stacklevel=2,
        )


def last_seed_sequence() -> np.random.SeedSequence | None:
    """The ``SeedSequence`` recorded by the last :func:`set_seed`, or None before any.

    Every call returns a fresh, equal sequence, so spawning children from it (which
    mutates a SeedSequence) gives the same children each time.
    """
    if _recorded_seed is None:
        return None
    return np.random.SeedSequence(_recorded_seed)


def _purpose_words(purpose: object) -> tuple[int, int]:
    """Two 32-bit words identifying ``purpose``, identical in every Python process.

    Python's ``hash()`` of a str is salted per interpreter (PYTHONHASHSEED), so a
    cryptographic digest is used instead.
    """
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"purpose must be a non-empty string, got {purpose!r}")
    digest = hashlib.sha256(purpose.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")


def _derive(entropy: int, spawn_key: tuple[int, ...]) -> int:
    """A 32-bit seed from ``entropy`` and ``spawn_key`` via SeedSequence's hash mixing."""
    sequence = np.random.SeedSequence(entropy, spawn_key=spawn_key)
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def _purpose_seed(entropy: int, purpose: str, rank: int) -> int:
    return _derive(entropy, (_PURPOSE_KIND, *_purpose_words(purpose), rank))


def _shared_seed(entropy: int, purpose: str) -> int:
    # No rank in the key: every rank derives the same value.
    return _derive(entropy, (_SHARED_KIND, *_purpose_words(purpose)))


def _worker_seed(entropy: int, purpose: str, rank: int, worker_id: int) -> int:
    return _derive(entropy, (_WORKER_KIND, *_purpose_words(purpose), rank, worker_id))


class SeedTree:
    """Every seed a run hands out, derived from one base seed.

    Seeds depend only on ``(seed, purpose, rank[, worker_id])`` — never on call order,
    on the process, or on the global generators — so two runs with the same recipe get
    the same seeds. Two kinds are handed out:

    - :meth:`seed_for` (and :meth:`worker_seed`, :meth:`generator`) differ per rank:
      for randomness each rank should draw on its own, such as augmentation, dropout
      or noise.
    - :meth:`shared_seed` is the same on every rank: for what the ranks must agree
      on, such as the initial weights or the shuffled order a
      ``DistributedSampler`` splits between them (``seed=tree.shared_seed("data_order")``;
      a per-rank seed there makes the ranks shuffle differently, so some samples are
      seen twice in an epoch and others never).

    The base seed itself is what :func:`set_seed` gives Python, NumPy and torch on
    every rank.

    ``as_dict()`` lists the standard seeds plus every one handed out so far, for the
    run's report. Raises ``ValueError`` for a seed outside ``[0, 2**32)``, a
    ``world_size`` below 1, or a ``rank`` outside ``[0, world_size)``.
    """

    __slots__ = ("_handed_out", "rank", "seed", "world_size")

    def __init__(self, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.seed: int = _validate_seed(seed)
        world_size = _validate_index(world_size, name="world_size")
        if world_size < 1:
            raise ValueError(f"world_size must be an integer >= 1, got {world_size}")
        rank = _validate_index(rank, name="rank")
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rank: int = rank
        self.world_size: int = world_size
        self._handed_out: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"SeedTree(seed={self.seed}, rank={self.rank}, world_size={self.world_size})"

    def seed_for(self, purpose: str) -> int:
        """The 32-bit seed of ``purpose`` (e.g. ``"augmentation"``) on this rank."""
        value = _purpose_seed(self.seed, purpose, self.rank)
        self._handed_out[purpose] = value
        return value

    def shared_seed(self, purpose: str) -> int:
        """The 32-bit seed of ``purpose`` (e.g. ``"data_order"``), equal on every rank.

        Independent of every :meth:`seed_for` value, including rank 0's.
        """
        value = _shared_seed(self.seed, purpose)
        self._handed_out[f"shared/{purpose}"] = value
        return value

    def worker_seed(self, worker_id: int, purpose: str = "dataloader") -> int:
        """The 32-bit seed of DataLoader worker ``worker_id`` for ``purpose`` on this rank."""
        worker_id = _validate_index(worker_id, name="worker_id")
        value = _worker_seed(self.seed, purpose, self.rank, worker_id)
        self._handed_out[f"{purpose}/worker/{worker_id}"] = value
        return value

    def generator(self, purpose: str = "dataloader") -> torch.Generator:
        """A CPU ``torch.Generator`` seeded with ``seed_for(purpose)``."""
        return torch.Generator().manual_seed(self.seed_for(purpose))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able summary: base seeds, standard derived seeds, all handed out.

        Keys: ``seed``, ``rank``, ``world_size``, ``python``/``numpy``/``torch`` (the
        base seed each global generator got), ``dataloader`` and ``rank_seed`` (the
        seeds of the purposes ``"dataloader"`` and ``"rank"`` on this rank), ``shared``
        (``{purpose: seed}``, the same on every rank, for
        :data:`STANDARD_SHARED_PURPOSES`) and ``derived`` (``{name: seed}`` for every
        seed handed out, in order; shared seeds are named ``"shared/<purpose>"``, worker
        seeds ``"<purpose>/worker/<id>"``).
        """
        return {
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "python": self.seed,
            "numpy": self.seed,
            "torch": self.seed,
            "dataloader": _purpose_seed(self.seed, "dataloader", self.rank),
            "rank_seed": _purpose_seed(self.seed, "rank", self.rank),
            "shared": {
                purpose: _shared_seed(self.seed, purpose) for purpose in STANDARD_SHARED_PURPOSES
            },
            "derived": dict(self._handed_out),
        }


def make_generator(
    seed: int | None = None, *, purpose: str = "dataloader", rank: int | None = None
) -> torch.Generator:
    """A CPU ``torch.Generator`` for ``purpose`` on ``rank``, e.g. a DataLoader's.

    Seeded with ``SeedTree(seed, rank, ...).seed_for(purpose)``. With ``seed`` None the
    entropy is ``torch.initial_seed()`` — the seed :func:`set_seed` gave torch — so the
    generator follows the run's seed without drawing from torch's global generator.
    ``rank`` None means :func:`orchestrator_fsm.distributed.get_rank`.
    """
    entropy = torch.initial_seed() if seed is None else _validate_seed(seed)
    rank = get_rank() if rank is None else _validate_index(rank, name="rank")
    return torch.Generator().manual_seed(_purpose_seed(entropy, purpose, rank))


def worker_init_fn(worker_id: int) -> None:
    """Seed ``random`` and NumPy inside a DataLoader worker; pass as ``worker_init_fn``.

    torch already gives each worker its own seed (the loader's base seed plus the worker
    id, itself drawn from the loader's generator), readable as ``torch.initial_seed()``.
    That seed and ``worker_id`` go through a SeedSequence, whose children seed Python's
    and NumPy's global generators, so workers draw differently from each other and from
    the parent (which fork would otherwise copy), and identically on every rerun.
    """
    worker_id = _validate_index(worker_id, name="worker_id")
    sequence = np.random.SeedSequence(
        torch.initial_seed(), spawn_key=(_WORKER_INIT_KIND, worker_id)
    )
    python_child, numpy_child = sequence.spawn(2)
    random.seed(int.from_bytes(python_child.generate_state(4, dtype=np.uint32).tobytes(), "little"))
    np.random.seed(numpy_child.generate_state(4, dtype=np.uint32))


def _read_flag(read: Callable[[], object]) -> bool | None:
    """A legacy torch flag, or None when torch refuses to report it.

    torch >= 2.9 raises on reading the legacy TF32 flags once the newer
    ``fp32_precision`` API was used to set them differently; such a flag is left alone.
    """
    try:
        return bool(read())
    except RuntimeError:
        return None


def _fp32_precision_nodes() -> dict[str, Any]:
    """The ``fp32_precision`` holders that the legacy TF32 setters write (torch >= 2.9)."""
    nodes: dict[str, Any] = {
        "cuda.matmul": torch.backends.cuda.matmul,
        "cudnn.conv": getattr(torch.backends.cudnn, "conv", None),
        "cudnn.rnn": getattr(torch.backends.cudnn, "rnn", None),
    }
    present: dict[str, Any] = {}
    for name, node in nodes.items():
        try:
            if node is not None and isinstance(node.fp32_precision, str):
                present[name] = node
        except (AttributeError, RuntimeError):
            continue
    return present


@attrs.frozen
class DeterminismState:
    """The reproducibility flags that :func:`set_seed` changes.

    ``capture()`` before seeding, ``restore()`` afterwards: torch's deterministic-
    algorithms mode and its warn-only switch, cuDNN's deterministic and benchmark flags,
    the cuBLAS/cuDNN TF32 flags (and, on torch >= 2.9, the ``fp32_precision`` settings
    behind them) and the seed recorded for :func:`last_seed_sequence`. Restore writes
    only what differs from the snapshot. The variables strict seeding exports
    (``CUBLAS_WORKSPACE_CONFIG``, ``PYTHONHASHSEED``) are not part of it: the step
    undoes them with the rest of the environment, through
    :func:`orchestrator_fsm._process.undoable`.

    RNG *state* is deliberately not captured or restored: the generators belong to the
    user's pipeline once seeded, and rewinding them at cleanup would silently replay
    randomness in whatever code runs next. Instances compare equal when every captured
    value is equal.
    """

    deterministic_algorithms: bool
    deterministic_warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    matmul_allow_tf32: bool | None
    cudnn_allow_tf32: bool | None
    fp32_precision: tuple[tuple[str, str], ...]
    recorded_seed: int | None

    @classmethod
    def capture(cls) -> DeterminismState:
        """Snapshot the current flags and recorded seed."""
        return cls(
            deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
            cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
            matmul_allow_tf32=_read_flag(lambda: torch.backends.cuda.matmul.allow_tf32),
            cudnn_allow_tf32=_read_flag(lambda: torch.backends.cudnn.allow_tf32),
            fp32_precision=tuple(
                (name, str(node.fp32_precision)) for name, node in _fp32_precision_nodes().items()
            ),
            recorded_seed=_recorded_seed,
        )

    def restore(self) -> None:
        """Put every captured value back; values that did not change are not written."""
        global _recorded_seed
        if (
            torch.are_deterministic_algorithms_enabled() != self.deterministic_algorithms
            or torch.is_deterministic_algorithms_warn_only_enabled() != self.deterministic_warn_only
        ):
            set_deterministic_algorithms(
                self.deterministic_algorithms, warn_only=self.deterministic_warn_only
            )
        if torch.backends.cudnn.deterministic != self.cudnn_deterministic:
            torch.backends.cudnn.deterministic = self.cudnn_deterministic
        if torch.backends.cudnn.benchmark != self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        # Legacy flags first: writing them also rewrites the fp32_precision nodes, which
        # are then corrected one by one. Writing a node that already matches is skipped,
        # because any write through the newer API makes torch refuse to read the legacy
        # flags of that backend afterwards.
        if self.matmul_allow_tf32 is not None and (
            _read_flag(lambda: torch.backends.cuda.matmul.allow_tf32) != self.matmul_allow_tf32
        ):
            torch.backends.cuda.matmul.allow_tf32 = self.matmul_allow_tf32
        if self.cudnn_allow_tf32 is not None and (
            _read_flag(lambda: torch.backends.cudnn.allow_tf32) != self.cudnn_allow_tf32
        ):
            torch.backends.cudnn.allow_tf32 = self.cudnn_allow_tf32
        nodes = _fp32_precision_nodes()
        for name, precision in self.fp32_precision:
            node = nodes.get(name)
            if node is not None and node.fp32_precision != precision:
                node.fp32_precision = precision
        _recorded_seed = self.recorded_seed


def step(run: RunContext) -> Undo:
    """Phase 1: seed every generator with ``training.seed`` (strict in reproducible mode).

    Calls the seed setter as ``seed_setter(seed, strict=..., warn_only=...)``; the undo
    puts back the flags and environment variables seeding changed (not RNG state).
    """
    hardware = run.cfg.hardware
    _, undo = undoable(
        lambda: run.deps.seed_setter(
            run.cfg.training.seed,
            strict=hardware.use_deterministic_algorithms,
            warn_only=hardware.deterministic_warn_only,
        ),
        DeterminismState.capture(),
    )
    return undo
