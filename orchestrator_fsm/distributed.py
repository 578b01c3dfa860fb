"""This process's place in a distributed launch, read from the launcher's environment.

torchrun (and ``torch.distributed.launch``) export ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; SLURM's ``srun`` exports ``SLURM_PROCID``, ``SLURM_LOCALID`` and
``SLURM_NTASKS``. The torchrun names win when both are present. Outside any launcher
the process is rank 0 of a world of 1. Nothing here initialises a process group.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["get_local_rank", "get_rank", "get_world_size"]


def _read_env_int(names: tuple[str, str], *, default: int, minimum: int, meaning: str) -> int:
    """The first of ``names`` present in the environment, parsed; ``default`` when none is.

    A variable that is present but does not hold an integer >= ``minimum`` is an error
    rather than a reason to fall back, so a broken launcher never silently becomes rank 0.
    """
    for name in names:
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            value = int(raw.strip())
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise ValueError(
                f"environment variable {name}={raw!r} is not a valid {meaning}: "
                f"expected an integer >= {minimum}"
            )
        return value
    return default


RANK_VARS: Final = ("RANK", "SLURM_PROCID")
LOCAL_RANK_VARS: Final = ("LOCAL_RANK", "SLURM_LOCALID")
WORLD_SIZE_VARS: Final = ("WORLD_SIZE", "SLURM_NTASKS")
#: Every variable a launcher (torchrun, SLURM) uses to tell a process where it stands.
LAUNCHER_ENV_VARS: Final = RANK_VARS + LOCAL_RANK_VARS + WORLD_SIZE_VARS


def get_rank() -> int:
    """Global rank of this process: ``RANK``, else ``SLURM_PROCID``, else 0.

    Raises ``ValueError`` naming the variable and its value when it is not an
    integer >= 0.
    """
    return _read_env_int(RANK_VARS, default=0, minimum=0, meaning="global rank")


def get_local_rank() -> int:
    """Rank of this process on its node: ``LOCAL_RANK``, else ``SLURM_LOCALID``, else 0.

    Raises ``ValueError`` naming the variable and its value when it is not an
    integer >= 0.
    """
    return _read_env_int(LOCAL_RANK_VARS, default=0, minimum=0, meaning="local rank")


def get_world_size() -> int:
    """Number of processes in the launch: ``WORLD_SIZE``, else ``SLURM_NTASKS``, else 1.

    Raises ``ValueError`` naming the variable and its value when it is not an
    integer >= 1.
    """
    return _read_env_int(WORLD_SIZE_VARS, default=1, minimum=1, meaning="world size")
