"""The seed tree: every seed a run hands out, derived from the one recipe seed.

The values come from ``numpy.random.SeedSequence`` hash mixing keyed by purpose, rank
(and worker), so they are independent, stable across Python processes and never drawn
from (hence never disturbing) the global generators. Phase 1 (``phases/determinism.py``)
seeds the global generators; this module is below the lifecycle and the phases so that
the run's context can carry a :class:`SeedTree` without importing either.
"""

from __future__ import annotations

import hashlib
import operator
from typing import TYPE_CHECKING, Any, Final, SupportsIndex

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "STANDARD_SHARED_PURPOSES",
    "WORKER_INIT_KIND",
    "SeedTree",
    "purpose_seed",
    "validate_index",
    "validate_seed",
]

_SEED_LIMIT: Final = 2**32
# The first word of each derivation's spawn key, so no two kinds of seed can collide.
_PURPOSE_KIND: Final = 0
_WORKER_KIND: Final = 1
#: The kind ``worker_init_fn`` (phase 1) derives a DataLoader worker's seeds with.
WORKER_INIT_KIND: Final = 2
_SHARED_KIND: Final = 3
#: Purposes whose shared seed ``SeedTree.as_dict`` always lists.
STANDARD_SHARED_PURPOSES: Final = ("data_order", "model_init")


def validate_seed(seed: object, *, name: str = "seed") -> int:
    """``seed`` as a plain int, or a ValueError saying what a seed must be."""
    if isinstance(seed, bool) or not isinstance(seed, SupportsIndex):
        raise ValueError(
            f"{name} must be an integer in [0, 2**32), got {type(seed).__name__} {seed!r}"
        )
    value = operator.index(seed)
    if not 0 <= value < _SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, 2**32), got {value}")
    return value


def validate_index(value: object, *, name: str) -> int:
    """``value`` as a plain int >= 0, or a ValueError naming it ``name``."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise ValueError(f"{name} must be an integer >= 0, got {type(value).__name__} {value!r}")
    index = operator.index(value)
    if index < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {index}")
    return index


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


def purpose_seed(entropy: int, purpose: str, rank: int) -> int:
    """The 32-bit seed of ``purpose`` on ``rank`` derived from ``entropy``."""
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

    The base seed itself is what ``set_seed`` (phase 1) gives Python, NumPy and torch on
    every rank.

    ``as_dict()`` lists the standard seeds plus every one handed out so far, for the
    run's report. Raises ``ValueError`` for a seed outside ``[0, 2**32)``, a
    ``world_size`` below 1, or a ``rank`` outside ``[0, world_size)``.
    """

    __slots__ = ("_handed_out", "rank", "seed", "world_size")

    def __init__(self, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.seed: int = validate_seed(seed)
        world_size = validate_index(world_size, name="world_size")
        if world_size < 1:
            raise ValueError(f"world_size must be an integer >= 1, got {world_size}")
        rank = validate_index(rank, name="rank")
        if rank >= world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rank: int = rank
        self.world_size: int = world_size
        self._handed_out: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"SeedTree(seed={self.seed}, rank={self.rank}, world_size={self.world_size})"

    def seed_for(self, purpose: str) -> int:
        """The 32-bit seed of ``purpose`` (e.g. ``"augmentation"``) on this rank."""
        value = purpose_seed(self.seed, purpose, self.rank)
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
        worker_id = validate_index(worker_id, name="worker_id")
        value = _worker_seed(self.seed, purpose, self.rank, worker_id)
        self._handed_out[f"{purpose}/worker/{worker_id}"] = value
        return value

    def generator(self, purpose: str = "dataloader") -> torch.Generator:
        """A CPU ``torch.Generator`` seeded with ``seed_for(purpose)``."""
        import torch

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
            "dataloader": purpose_seed(self.seed, "dataloader", self.rank),
            "rank_seed": purpose_seed(self.seed, "rank", self.rank),
            "shared": {
                purpose: _shared_seed(self.seed, purpose) for purpose in STANDARD_SHARED_PURPOSES
            },
            "derived": dict(self._handed_out),
        }
