"""The rerun bundle: ``reports/rerun.json``, everything needed to run a run again.

Written by rank 0 in the manifest step (phase 5), after ``config.yaml``,
``requirements.txt`` and the git files, and completed at cleanup with the native
libraries the process then had mapped (CUDA, cuDNN and NCCL load lazily, at first use,
so only a late look sees them). Sections:

- ``command``: the command line (secrets redacted), the working directory, the
  interpreter;
- ``recipe``: the recipe file and its SHA-256 when it was read; ``config``: the saved
  resolved config (``config.yaml``) and the dotted keys whose values are redacted
  there; ``overrides``: the overrides as given, in order (secret values as ``***``);
- ``entry``: the pipeline as given (``module:function`` or ``file.py:function``), the
  file it lives in and that file's SHA-256 (``None`` in library use, where the caller
  runs its own code);
- ``seeds``: the seed tree (:meth:`SeedTree.as_dict`, without the seeds handed out);
- ``git``: commit, branch, dirty flag, the diff's size and SHA-256 and whether it was
  truncated in ``git_diff.patch``;
- ``packages``: ``{name: version}`` of the installed distributions;
- ``environment``: Python, platform, the torch build (version, CUDA, cuDNN when CUDA
  was already initialised, MKL, OpenMP, MKL-DNN and torch's build configuration), the
  CPU model and the GPU models the NVIDIA driver lists (CUDA is never initialised for
  the bundle), and the allow-listed environment variables (:data:`BUNDLE_ENV_VARS`, as
  the run was given them, redacted);
- ``loaded_libraries``: the native libraries mapped into the process at cleanup
  (path and soname from ``/proc/self/maps``; ``None`` where there is no such file).
  Library files are never hashed: the path and the version-bearing soname say which
  build was loaded at a cost of about a millisecond.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from orchestrator_fsm._fs import atomic_write_json
from orchestrator_fsm.layout import bundle_file, config_file
from orchestrator_fsm.redaction import REDACTED, redact_argv, redact_secrets

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.phases.context import RunContext

__all__ = [
    "BUNDLE_ENV_VARS",
    "BUNDLE_FORMAT",
    "BundleError",
    "collect_environment",
    "collect_git",
    "collect_packages",
    "describe_entry",
    "launch_environment",
    "loaded_libraries",
    "read_bundle",
    "record_loaded_libraries",
    "redacted_keys",
    "redacted_overrides",
    "seed_summary",
    "sha256_file",
    "working_directory",
    "write_bundle",
]

BUNDLE_FORMAT: Final = 1

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


class BundleError(ValueError):
    """A run directory without a readable rerun bundle; the message names the file."""


def sha256_file(path: Path) -> str | None:
    data = _read_bytes(path)
    return None if data is None else hashlib.sha256(data).hexdigest()


def redacted_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with the values of secret keys (and URL passwords) as ``***``."""
    return [redact_argv(["--set", text])[1] for text in overrides]


def redacted_keys(data: Any, prefix: str = "") -> list[str]:
    """The dotted keys of ``data`` whose value was redacted (holds ``***``)."""
    keys: list[str] = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            keys += redacted_keys(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            keys += redacted_keys(value, f"{prefix}[{index}]")
    elif isinstance(data, str) and (data == REDACTED or f":{REDACTED}@" in data):
        keys.append(prefix)
    return keys


def describe_entry(spec: str | None) -> dict[str, Any] | None:
    """The entry ``spec`` as given, the file it lives in and that file's SHA-256.

    A module entry is looked up as ``run`` looks it up (the working directory first);
    its own file is hashed, not the modules it imports."""
    if spec is None:
        return None
    from orchestrator_fsm.entry import entry_search_path

    module_part = spec.rpartition(":")[0]
    path: str | None = None
    if module_part.endswith(".py") or "/" in module_part or os.sep in module_part:
        path = str(Path(module_part).expanduser().resolve())
        kind = "file"
    else:
        kind = "module"
        module = sys.modules.get(module_part)
        origin = getattr(module, "__file__", None)
        if origin is None:
            with entry_search_path(spec), contextlib.suppress(ImportError, ValueError):
                found = importlib.util.find_spec(module_part)
                origin = None if found is None else found.origin
        path = None if origin is None else str(Path(origin).resolve())
    return {
        "spec": spec,
        "kind": kind,
        "path": path,
        "sha256": None if path is None else sha256_file(Path(path)),
    }


def seed_summary(seed: int, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """The seed tree of ``seed`` as the bundle keeps it (the standard seeds)."""
    from orchestrator_fsm.phases.determinism import SeedTree

    seeds = SeedTree(seed, rank, world_size).as_dict()
    seeds.pop("derived", None)
    return seeds


def collect_packages(requirements: Path | None = None) -> dict[str, str]:
    """``{name: version}`` of the installed distributions (as in ``requirements.txt``;
    a direct-URL install keeps its marker after the version): read from
    ``requirements``, the file phase 5 wrote, when given and readable, else listed."""
    from orchestrator_fsm.phases.manifest import requirement_lines

    lines: list[str] | None = None
    if requirements is not None:
        try:
            text = requirements.read_text(encoding="utf-8")
        except OSError:
            pass
        else:
            lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    packages: dict[str, str] = {}
    for line in requirement_lines() if lines is None else lines:
        name, _, version = line.partition("==")
        packages[name.lower()] = version
    return packages


def _git_from_reports(reports: Path) -> dict[str, Any] | None:
    from orchestrator_fsm.phases.manifest import (
        GIT_DIFF_FILE_NAME,
        GIT_DIFF_TRUNCATED_MARK,
        read_git_info,
    )

    try:
        info = read_git_info(reports)
    except OSError:
        return None
    if info is None:
        return None
    try:
        patch: bytes | None = (reports / GIT_DIFF_FILE_NAME).read_bytes()
    except OSError:
        patch = None
    return {
        "commit": info.get("commit"),
        "branch": info.get("branch"),
        "dirty": info.get("dirty"),
        "toplevel": info.get("toplevel"),
        "diff_file": None if patch is None else GIT_DIFF_FILE_NAME,
        "diff_bytes": 0 if patch is None else len(patch),
        "diff_sha256": None if not patch else hashlib.sha256(patch).hexdigest(),
        # The patch ends with the manifest's note line when it was cut at 1 MiB.
        "diff_truncated": patch is not None and GIT_DIFF_TRUNCATED_MARK in patch[-4096:],
    }


def collect_git() -> dict[str, Any] | None:
    """The git state of the working directory as the bundle keeps it (the manifest's
    reading of it, done again); ``None`` outside a checkout."""
    from orchestrator_fsm.layout import GIT_INFO_FILE
    from orchestrator_fsm.phases.manifest import AuditSaver

    with tempfile.TemporaryDirectory(prefix="orchestrator-fsm-git-") as scratch:
        AuditSaver().dump_git_info(Path(scratch) / GIT_INFO_FILE)
        return _git_from_reports(Path(scratch))


def _cpu_model() -> str:
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


def _torch_build() -> dict[str, Any]:
    import torch

    backends = torch.backends
    # torch leaves these unannotated; naming their types keeps the calls typed.
    flags: dict[str, Callable[[], object]] = {
        "cudnn": backends.cudnn.is_available,
        "mkl": backends.mkl.is_available,
        "mkldnn": backends.mkldnn.is_available,
        "openmp": backends.openmp.is_available,
    }
    cudnn_version_of: Callable[[], object] = backends.cudnn.version
    cudnn_version = None
    # Asking cuDNN its version loads it; only when CUDA is up already (the loaded
    # libraries name the cuDNN build a CUDA run used in any case).
    with contextlib.suppress(Exception):
        if flags["cudnn"]() and _cuda_initialized():
            cudnn_version = cudnn_version_of()
    show = str(torch.__config__.show())
    return {
        "version": torch.__version__,
        "git_version": getattr(torch.version, "git_version", None),
        "debug": bool(getattr(torch.version, "debug", False)),
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "cudnn": cudnn_version,
        "mkl": bool(flags["mkl"]()),
        "mkldnn": bool(flags["mkldnn"]()),
        "openmp": bool(flags["openmp"]()),
        "build_config": [line.strip() for line in show.splitlines() if line.strip()],
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


def launch_environment() -> dict[str, str]:
    """The variables of :data:`BUNDLE_ENV_VARS` set now, values redacted."""
    env = {name: os.environ[name] for name in BUNDLE_ENV_VARS if name in os.environ}
    redacted: dict[str, str] = redact_secrets(env)
    return redacted


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
    paths: set[str] = set()
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            name = parts[5].rsplit("/", 1)[-1]
            if _SONAME.search(name) or ".so." in name:
                paths.add(parts[5].removesuffix(" (deleted)"))
    return [{"path": path, "soname": path.rsplit("/", 1)[-1]} for path in sorted(paths)]


def _recipe_section(cfg: Config) -> dict[str, Any]:
    source = cfg.source
    return {
        "path": None if source is None else str(source),
        "sha256": None if source is None else sha256_file(source),
    }


def write_bundle(run: RunContext) -> Path:
    """Phase 5's part: collect the bundle of ``run`` and write it atomically."""
    from orchestrator_fsm.layout import REQUIREMENTS_FILE
    from orchestrator_fsm.phases.manifest import record_invocation

    paths = run.require_paths()
    invocation = record_invocation()
    saved = config_file(paths.root)
    saved_bytes = _read_bytes(saved)
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "run_id": paths.run_id,
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": {
            "argv": redact_argv(invocation["argv"]),
            "cwd": invocation["cwd"],
            "python_executable": invocation["python_executable"],
        },
        "recipe": _recipe_section(run.cfg),
        "config": {
            "file": str(saved.relative_to(paths.root)),
            "sha256": None if saved_bytes is None else hashlib.sha256(saved_bytes).hexdigest(),
            "redacted_keys": redacted_keys(_parse_saved_config(saved_bytes)),
        },
        "overrides": redacted_overrides(run.cfg.overrides),
        "entry": describe_entry(run.entry),
        "rerun_of": None if run.rerun_of is None else str(run.rerun_of),
        "seeds": seed_summary(run.cfg.training.seed, run.rank, run.world_size),
        "git": _git_from_reports(paths.reports),
        "packages": collect_packages(paths.reports / REQUIREMENTS_FILE),
        "environment": collect_environment(run.launch_env),
        "loaded_libraries": None,
    }
    target = bundle_file(paths.root)
    atomic_write_json(target, bundle)
    return target


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _parse_saved_config(data: bytes | None) -> Any:
    import yaml

    from orchestrator_fsm.config.recipe import load_trusted_yaml

    if data is None:
        return None
    try:
        return load_trusted_yaml(data)
    except yaml.YAMLError:
        return None


def record_loaded_libraries(run: RunContext) -> None:
    """At cleanup (rank 0, once the bundle exists): add the libraries mapped now."""
    if not run.is_main_process or run.paths is None:
        return
    target = bundle_file(run.paths.root)
    try:
        bundle = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(bundle, dict):
        return
    bundle["loaded_libraries"] = loaded_libraries()
    with contextlib.suppress(OSError):
        atomic_write_json(target, bundle)


def read_bundle(run_dir: Path | str) -> dict[str, Any]:
    """The bundle of the run in ``run_dir``; :class:`BundleError` naming the file when
    there is none or it is not a bundle."""
    target = bundle_file(Path(run_dir))
    if not Path(run_dir).is_dir():
        raise BundleError(f"{run_dir} is not a directory")
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(
            f"{target} does not exist: {run_dir} is not a run directory, or its run was "
            f"made before rerun bundles were written"
        ) from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {target}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{target} is not a rerun bundle of format {BUNDLE_FORMAT}")
    return data


@contextlib.contextmanager
def working_directory(path: str | None) -> Iterator[None]:
    """Within the block, the working directory is ``path`` (when it exists)."""
    if path is None or not os.path.isdir(path):
        yield
        return
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
