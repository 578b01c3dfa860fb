"""Device resolution: turn the recipe's ``hardware.device`` string into a ``torch.device``.

``to_device_obj`` is the default ``device_resolver``. It changes no process state, so
it has no undo.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Final

import torch

from orchestrator_fsm._system import mps_available
from orchestrator_fsm.errors import DeviceError

if TYPE_CHECKING:
    from orchestrator_fsm.run_context import RunContext

__all__ = ["available_devices", "resolve_device", "step", "to_device_obj"]

_CUDA_INDEX: Final = re.compile(r"cuda:(\d+)")
_ACCEPTED: Final = "auto, cpu, cuda, cuda:N, mps"


def _cuda_count() -> int:
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def available_devices() -> list[str]:
    """Names of the devices this process can use, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    names = ["cpu"]
    names.extend(f"cuda:{index}" for index in range(_cuda_count()))
    if mps_available():
        names.append("mps")
    return names


def _unavailable(requested: str, reason: str) -> DeviceError:
    return DeviceError(
        f"requested device {requested!r} but {reason}; available: {', '.join(available_devices())}"
    )


def _visible_hint() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return "" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible!r})"


def _renumbered() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return ""
    return (
        f" (CUDA_VISIBLE_DEVICES={visible!r} hides the other GPUs and numbers the visible "
        "ones from 0)"
    )


def _no_cuda_reason() -> str:
    hint = _visible_hint()
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    return f"CUDA is not available: no visible CUDA device or driver{hint}"


def _bind_cuda(requested: str, local_rank: int) -> torch.device:
    count = _cuda_count()
    if count == 0:
        raise _unavailable(requested, _no_cuda_reason())
    # Modulo, not an error: when the scheduler gives each task its own GPU
    # (srun --gpus-per-task=1), every task sees one device, numbered 0.
    return torch.device("cuda", local_rank % count)


def to_device_obj(device_str: str, local_rank: int = 0) -> torch.device:
    """The ``torch.device`` for ``device_str`` (``auto|cpu|cuda|cuda:N|mps``).

    ``auto`` prefers CUDA, then MPS, then the CPU. ``cuda`` (and ``auto`` on a machine
    with CUDA) resolves to ``cuda:{local_rank % device_count}``, so each process of a
    node gets its own GPU while there are as many GPUs as processes, and a single
    process gets ``cuda:0``. ``device_count`` counts the devices this process can see,
    so it honours ``CUDA_VISIBLE_DEVICES`` (which renumbers them from 0). ``cuda:N`` is
    used as given, on every rank, once ``N`` is checked against the visible devices.
    Nothing is read from the environment here: ``local_rank`` is the run's. Case and
    surrounding spaces are ignored.

    Raises ``DeviceError`` naming the request and the available devices when the
    device is unknown or not usable here.
    """
    if not isinstance(device_str, str):
        raise DeviceError(
            f"device must be a string, one of {_ACCEPTED}; got {type(device_str).__name__} "
            f"{device_str!r}; available: {', '.join(available_devices())}"
        )
    if isinstance(local_rank, bool) or not isinstance(local_rank, int) or local_rank < 0:
        raise DeviceError(f"local_rank must be an integer >= 0, got {local_rank!r}")
    requested = device_str.strip().lower()

    if requested == "cpu":
        return torch.device("cpu")
    if requested == "auto":
        if _cuda_count() > 0:
            return _bind_cuda(device_str, local_rank)
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda":
        return _bind_cuda(device_str, local_rank)
    if requested == "mps":
        if not mps_available():
            reason = (
                "this torch build has no MPS support"
                if not torch.backends.mps.is_built()
                else "MPS is not available on this machine (it needs Apple silicon, macOS 12.3+)"
            )
            raise _unavailable(device_str, reason)
        return torch.device("mps")
    match = _CUDA_INDEX.fullmatch(requested)
    if match is not None:
        index = int(match.group(1))
        count = _cuda_count()
        if count == 0:
            raise _unavailable(device_str, _no_cuda_reason())
        if index >= count:
            listing = ", ".join(f"cuda:{i}" for i in range(count))
            noun = "device" if count == 1 else "devices"
            verb = "is" if count == 1 else "are"
            raise _unavailable(
                device_str, f"only {count} CUDA {noun} ({listing}) {verb} visible{_renumbered()}"
            )
        return torch.device("cuda", index)
    raise DeviceError(
        f"unknown device {device_str!r}: expected one of {_ACCEPTED}; "
        f"available: {', '.join(available_devices())}"
    )


def resolve_device(run: RunContext) -> torch.device:
    """``device_resolver(device_str=hardware.device, local_rank=...)`` as a ``torch.device``.

    Any failure is raised as a ``DeviceError`` whose text begins "Device resolution
    failed at runtime (config requested '<device>')", with the original as its cause.
    """
    requested = run.cfg.hardware.device
    try:
        device = run.deps.device_resolver(device_str=requested, local_rank=run.local_rank)
    except Exception as exc:
        raise DeviceError(
            f"Device resolution failed at runtime (config requested '{requested}'): {exc} "
            f"(local rank {run.local_rank})"
        ) from exc
    return device if isinstance(device, torch.device) else torch.device(device)


def step(run: RunContext) -> None:
    """Resolve the run's device on every rank; it changes no process state (no undo)."""
    run.device = resolve_device(run)
