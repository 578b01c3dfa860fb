"""Phase 1 — determinism: seed every global generator and pin the reproducibility flags.

``set_seed`` is the default seeding step; ``DeterminismState`` is its undo. The seed
tree (``SeedTree``, whose home is :mod:`orchestrator_fsm.seeds`, ``make_generator``,
``worker_init_fn``) hands out the *other* seeds a
run needs — per purpose, per rank or shared by all ranks, per DataLoader worker —
derived from the one recipe seed with ``numpy.random.SeedSequence`` so they are
independent, stable across Python processes and never drawn from (hence never
disturbing) the global generators.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import numpy as np
import torch

from orchestrator_fsm._process import undoable
from orchestrator_fsm._system import mps_available
from orchestrator_fsm.distributed import get_rank
from orchestrator_fsm.seeds import (
    STANDARD_SHARED_PURPOSES,
    WORKER_INIT_KIND,
    SeedTree,
    purpose_seed,
    validate_index,
    validate_seed,
)

if TYPE_CHECKING:
    from orchestrator_fsm.lifecycle.machine import Undo
    from orchestrator_fsm.run_context import RunContext

__all__ = [
    "CUBLAS_WORKSPACE_CONFIG",
    "STANDARD_SHARED_PURPOSES",
    "DeterminismState",
    "SeedTree",
    "changed_settings",
    "determinism_settings",
    "hash_seed_in_force",
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

# The seed of the last ``set_seed`` call, from which ``last_seed_sequence`` rebuilds the
# recorded SeedSequence. Module state on purpose: ``DeterminismState`` restores it.
_recorded_seed: int | None = None


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
    seed = validate_seed(seed)

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


def hash_seed_in_force() -> int | None:
    """The seed of this process's str/bytes hashing: ``PYTHONHASHSEED`` as the
    interpreter read it at start, or None when hashing is randomized (unset or
    ``random``). ``orchestrator-fsm run`` of a reproducible recipe sets it to the
    recipe's seed before anything else is imported."""
    if _HASH_SEED_AT_START is None:
        return None
    try:
        return int(_HASH_SEED_AT_START)
    except ValueError:  # "random"
        return None


def last_seed_sequence() -> np.random.SeedSequence | None:
    """The ``SeedSequence`` recorded by the last :func:`set_seed`, or None before any.

    Every call returns a fresh, equal sequence, so spawning children from it (which
    mutates a SeedSequence) gives the same children each time.
    """
    if _recorded_seed is None:
        return None
    return np.random.SeedSequence(_recorded_seed)


def make_generator(
    seed: int | None = None, *, purpose: str = "dataloader", rank: int | None = None
) -> torch.Generator:
    """A CPU ``torch.Generator`` for ``purpose`` on ``rank``, e.g. a DataLoader's.

    Seeded with ``SeedTree(seed, rank, ...).seed_for(purpose)``. With ``seed`` None the
    entropy is ``torch.initial_seed()`` — the seed :func:`set_seed` gave torch — so the
    generator follows the run's seed without drawing from torch's global generator.
    ``rank`` None means :func:`orchestrator_fsm.distributed.get_rank`.
    """
    entropy = torch.initial_seed() if seed is None else validate_seed(seed)
    rank = get_rank() if rank is None else validate_index(rank, name="rank")
    return torch.Generator().manual_seed(purpose_seed(entropy, purpose, rank))


def worker_init_fn(worker_id: int) -> None:
    """Seed ``random`` and NumPy inside a DataLoader worker; pass as ``worker_init_fn``.

    torch already gives each worker its own seed (the loader's base seed plus the worker
    id, itself drawn from the loader's generator), readable as ``torch.initial_seed()``.
    That seed and ``worker_id`` go through a SeedSequence, whose children seed Python's
    and NumPy's global generators, so workers draw differently from each other and from
    the parent (which fork would otherwise copy), and identically on every rerun.
    """
    worker_id = validate_index(worker_id, name="worker_id")
    sequence = np.random.SeedSequence(torch.initial_seed(), spawn_key=(WORKER_INIT_KIND, worker_id))
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


def determinism_settings() -> dict[str, object]:
    """The seed torch was last given and the determinism flags, by name: what
    :func:`changed_settings` compares. Python's and NumPy's generators keep no seed to
    read back, so re-seeding them is not seen."""
    state = DeterminismState.capture()
    return {
        "torch.initial_seed": torch.initial_seed(),
        "deterministic_algorithms": state.deterministic_algorithms,
        "deterministic_warn_only": state.deterministic_warn_only,
        "cudnn.deterministic": state.cudnn_deterministic,
        "cudnn.benchmark": state.cudnn_benchmark,
        "cuda.matmul.allow_tf32": state.matmul_allow_tf32,
        "cudnn.allow_tf32": state.cudnn_allow_tf32,
        **{f"{name}.fp32_precision": precision for name, precision in state.fp32_precision},
    }


def changed_settings(applied: Mapping[str, object]) -> dict[str, dict[str, object]]:
    """``{name: {"applied": ..., "at_end": ...}}`` for each of :func:`determinism_settings`
    that differs now from ``applied`` (what phase 1 left): the program re-seeded torch
    (``torch.manual_seed(1337)``) or switched a flag (TF32, deterministic algorithms)."""
    now = determinism_settings()
    return {
        name: {"applied": value, "at_end": now.get(name)}
        for name, value in applied.items()
        if now.get(name) != value
    }


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
    run.determinism_applied = determinism_settings()
    return undo
