"""What this process runs in, as the rerun bundle records it and ``rerun`` compares it.

:func:`launch_environment` is the allow-listed environment variables (those that change
numerical results or thread counts, :data:`BUNDLE_ENV_VARS`) as they are set now,
redacted; :func:`collect_environment` adds Python, the platform, the torch build, the
CPU model and the GPU models; :func:`loaded_libraries` lists the native libraries
mapped into the process. Nothing here writes anything.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from orchestrator_fsm.redaction import redact_secrets

__all__ = [
    "BUNDLE_ENV_VARS",
    "collect_environment",
    "launch_environment",
    "loaded_libraries",
]

BUNDLE_ENV_VARS: Final = (
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_LAUNCH_BLOCKING",
    "CUDA_VISIBLE_DEVICES",
    "CUDNN_LOGINFO_DBG",
    "KMP_AFFINITY",
    "KMP_BLOCKTIME",
    "MKL_CBWR",
    "MKL_NUM_THREADS",
    "NCCL_ALGO",
    "NCCL_PROTO",
    "NVIDIA_TF32_OVERRIDE",
    "OMP_NUM_THREADS",
    "OMP_PROC_BIND",
    "OPENBLAS_NUM_THREADS",
    "PYTHONHASHSEED",
    "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
    "TORCH_CUDNN_V8_API_ENABLED",
)
"""The environment variables the bundle records (each only when set): those that change
numerical results or thread counts. Nothing else of the environment is kept."""

_SONAME: Final = re.compile(r"\.so(\.[0-9][0-9.]*)?$")
# The path of a line of /proc/self/maps that maps a file: what follows the five fields
# before it when it starts with "/" (as ``line.split(None, 5)[5]`` has it).
_MAPPED_FILE: Final = re.compile(
    r"^[^\S\n]*\S+[^\S\n]+\S+[^\S\n]+\S+[^\S\n]+\S+[^\S\n]+\S+[^\S\n]+(/.*)$", re.MULTILINE
)


def launch_environment() -> dict[str, str]:
    """The variables of :data:`BUNDLE_ENV_VARS` set now, values redacted."""
    env = {name: os.environ[name] for name in BUNDLE_ENV_VARS if name in os.environ}
    redacted: dict[str, str] = redact_secrets(env)
    return redacted


@functools.cache
def _cpu_model() -> str:
    # Read once per process: the CPU a process runs on keeps its model.
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo,
    ):
        for line in cpuinfo:
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("model name", "Hardware", "cpu model"):
                return value.strip()
    return platform.processor() or platform.machine()


def _cuda_initialized() -> bool:
    import torch

    # torch leaves it unannotated; naming its type keeps the call typed.
    initialized: Callable[[], bool] = torch.cuda.is_initialized
    return initialized()


@functools.cache
def _torch_build_fixed() -> tuple[tuple[str, Any], ...]:
    """What the loaded torch build says of itself that cannot change in a process
    (``torch.__config__.show()`` alone costs about a millisecond)."""
    import torch

    backends = torch.backends
    # torch leaves these unannotated; naming their types keeps the calls typed.
    flags: dict[str, Callable[[], object]] = {
        "mkl": backends.mkl.is_available,
        "mkldnn": backends.mkldnn.is_available,
        "openmp": backends.openmp.is_available,
    }
    show = str(torch.__config__.show())
    return (
        ("version", torch.__version__),
        ("git_version", getattr(torch.version, "git_version", None)),
        ("debug", bool(getattr(torch.version, "debug", False))),
        ("cuda", torch.version.cuda),
        ("hip", getattr(torch.version, "hip", None)),
        ("mkl", bool(flags["mkl"]())),
        ("mkldnn", bool(flags["mkldnn"]())),
        ("openmp", bool(flags["openmp"]())),
        ("build_config", tuple(line.strip() for line in show.splitlines() if line.strip())),
    )


def _torch_build() -> dict[str, Any]:
    import torch

    cudnn = torch.backends.cudnn
    cudnn_available: Callable[[], object] = cudnn.is_available
    cudnn_version_of: Callable[[], object] = cudnn.version
    cudnn_version = None
    # Asking cuDNN its version loads it; only when CUDA is up already (the loaded
    # libraries name the cuDNN build a CUDA run used in any case).
    with contextlib.suppress(Exception):
        if cudnn_available() and _cuda_initialized():
            cudnn_version = cudnn_version_of()
    fixed = dict(_torch_build_fixed())
    return {
        "version": fixed["version"],
        "git_version": fixed["git_version"],
        "debug": fixed["debug"],
        "cuda": fixed["cuda"],
        "hip": fixed["hip"],
        "cudnn": cudnn_version,
        "mkl": fixed["mkl"],
        "mkldnn": fixed["mkldnn"],
        "openmp": fixed["openmp"],
        "build_config": list(fixed["build_config"]),
    }


def _gpus(driver: Path = Path("/proc/driver/nvidia/gpus")) -> list[str]:
    """The NVIDIA GPU models the driver lists, without initialising CUDA (which would
    cost a run hundreds of milliseconds); torch's names when CUDA is already up."""
    names: list[str] = []
    with contextlib.suppress(OSError):
        for info in sorted(driver.glob("*/information")):
            for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
                key, sep, value = line.partition(":")
                if sep and key.strip() == "Model":
                    names.append(value.strip())
    if names:
        return names
    import torch

    with contextlib.suppress(Exception):
        if _cuda_initialized():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return names


def collect_environment(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Python, platform, torch build, CPU and GPU models and the allow-listed variables
    (``env``, default :func:`launch_environment`)."""
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "torch": _torch_build(),
        "hardware": {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "gpus": _gpus()},
        "env": dict(launch_environment() if env is None else env),
    }


def loaded_libraries(maps: Path = Path("/proc/self/maps")) -> list[dict[str, str]] | None:
    """The shared libraries mapped into this process: ``{"path", "soname"}``, sorted
    by path; ``None`` where ``maps`` cannot be read (not Linux)."""
    try:
        text = maps.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # A line is "address perms offset device inode [path]"; a library is mapped several
    # times, so its path is looked at once. (The lines as splitlines cuts them.)
    found = set(_MAPPED_FILE.findall("\n".join(text.splitlines())))
    paths: set[str] = set()
    for path in found:
        name = path.rsplit("/", 1)[-1]
        if _SONAME.search(name) or ".so." in name:
            paths.add(path.removesuffix(" (deleted)"))
    return [{"path": path, "soname": path.rsplit("/", 1)[-1]} for path in sorted(paths)]
