"""Phase 7, environment report: what this run ran on, in the log and in ``environment.json``.

The report answers "could I reproduce this?": which run and config, which hardware
and device, which determinism flags torch actually has set, every seed derived from
``training.seed``, thread and worker counts, where the outputs are, the git state, the
library versions and the distributed layout. Environment variables are never dumped
wholesale (they routinely hold credentials); only the few that change numerical
behaviour or thread counts are listed, and only when set.
"""

from __future__ import annotations

import enum
import logging
import os
import platform
import socket
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch

from orchestrator_fsm._fs import atomic_write_json
from orchestrator_fsm._system import available_cpu_count, distribution_version, mps_available
from orchestrator_fsm._text import counted
from orchestrator_fsm._version import __version__
from orchestrator_fsm.git_state import GitState, read_git_info
from orchestrator_fsm.layout import REPORT_FILE
from orchestrator_fsm.phases.determinism import hash_seed_in_force
from orchestrator_fsm.phases.device import resolve_device
from orchestrator_fsm.redaction import redact_secrets
from orchestrator_fsm.run_log import FILE_ONLY

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.distributed import Launch
    from orchestrator_fsm.layout import RunPaths
    from orchestrator_fsm.run_context import RunContext
    from orchestrator_fsm.seeds import SeedTree

__all__ = [
    "REPORTED_ENV_VARS",
    "Reporter",
    "build_environment_report",
    "render_report_lines",
    "step",
]


REPORTED_ENV_VARS: Final = (
    "CUBLAS_WORKSPACE_CONFIG",
    "CUDA_LAUNCH_BLOCKING",
    "CUDA_VISIBLE_DEVICES",
    "MKL_NUM_THREADS",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "PYTHONHASHSEED",
)
"""The only environment variables the report shows (each only when set)."""

_DISTRIBUTION_NAME: Final = "orchestrator-fsm"


def _cuda_summary() -> dict[str, Any]:
    available = torch.cuda.is_available()
    summary: dict[str, Any] = {
        "available": available,
        "device_count": 0,
        "devices": [],
        "cuda_version": torch.version.cuda,
    }
    if available:
        count = torch.cuda.device_count()
        names: list[str] = []
        for index in range(count):
            try:
                names.append(torch.cuda.get_device_name(index))
            except (RuntimeError, AssertionError) as exc:
                names.append(f"unknown ({exc})")
        summary["device_count"] = count
        summary["devices"] = names
    return summary


def _device_type(device: Any) -> str | None:
    try:
        return torch.device(device).type
    except (RuntimeError, TypeError, ValueError):
        return None


def _torch_determinism() -> dict[str, Any]:
    cudnn = torch.backends.cudnn
    # torch leaves these two unannotated; naming their types keeps the call sites typed.
    cudnn_is_available: Callable[[], bool] = cudnn.is_available
    cudnn_version: Callable[[], int | None] = cudnn.version
    available = cudnn_is_available()
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_available": available,
        "cudnn_version": cudnn_version() if available else None,
        "cudnn_enabled": cudnn.enabled,
        "cudnn_deterministic": cudnn.deterministic,
        "cudnn_benchmark": cudnn.benchmark,
    }


def determinism_mode(flags: Mapping[str, Any]) -> str:
    """What the applied torch flags (:func:`_torch_determinism`) make of a run, in one
    word: ``strict`` (deterministic algorithms only), ``strict-warn-only`` (a warning
    where there is none), ``cudnn-deterministic`` (seeded, cuDNN deterministic, other
    nondeterministic algorithms allowed: what seeding does without
    ``hardware.reproducible``) or ``nondeterministic``."""
    if flags["deterministic_algorithms"]:
        return "strict-warn-only" if flags["deterministic_warn_only"] else "strict"
    if flags["cudnn_deterministic"] and not flags["cudnn_benchmark"]:
        return "cudnn-deterministic"
    return "nondeterministic"


_MODE_WORDS: Final = {
    "strict": "strict (deterministic algorithms only)",
    "strict-warn-only": "strict, warn only (nondeterministic algorithms warn)",
    "cudnn-deterministic": "seeded, cuDNN deterministic (other algorithms may not be)",
    "nondeterministic": "nondeterministic (cuDNN may pick algorithms per run)",
}


class _FromRunDirectory(enum.Enum):
    """Marks the report's git section as "read the run's ``git_info.txt``"."""

    READ = "read"


_READ_GIT_INFO: Final = _FromRunDirectory.READ


def _git_section(git: GitState | _FromRunDirectory | None, reports_dir: Path) -> Any:
    """The git state's ``key: value`` pairs, given or read from ``reports/git_info.txt``;
    ``None`` when there is none."""
    info = read_git_info(reports_dir) if git is _READ_GIT_INFO else git and git.as_info()
    if info is None:
        return None
    # A remote URL may carry credentials (https://user:token@host/...).
    redacted: dict[str, str] = redact_secrets(info)
    return redacted


def _reported_env() -> dict[str, str]:
    return {name: os.environ[name] for name in REPORTED_ENV_VARS if name in os.environ}


def build_environment_report(
    cfg: Config,
    paths: RunPaths,
    device: Any,
    applied_threads: int,
    num_workers: int,
    *,
    launch: Launch | None = None,
    seed_tree: SeedTree | None = None,
    git: GitState | _FromRunDirectory | None = _READ_GIT_INFO,
    thread_basis: str | None = None,
) -> dict[str, Any]:
    """The phase 7 report as plain JSON-able data, one key per section.

    Sections: ``run, hardware, determinism, seeds, threads, paths, git, versions,
    distributed, environment``. ``distributed`` describes ``launch`` (the run's, as the
    lifecycle passes it; :func:`~orchestrator_fsm.distributed.discover_launch` when
    None) and ``seeds`` is ``seed_tree.as_dict()`` (default ``SeedTree(training.seed,
    rank, world_size)``); ``git`` holds the ``key: value`` pairs of ``git`` (what phase 5
    recorded; ``None`` outside a checkout), and when it is not given those of
    ``reports/git_info.txt`` (``None`` when there is no such file); ``environment`` holds
    only those of :data:`REPORTED_ENV_VARS` that are set. Values describe this process
    as it is now (torch's flags as actually set, not as requested). Secrets are
    redacted as :func:`~orchestrator_fsm.redaction.redact_secrets` redacts them.
    """
    from orchestrator_fsm.distributed import discover_launch
    from orchestrator_fsm.seeds import SeedTree

    if launch is None:
        launch = discover_launch()
    if seed_tree is None:
        seed_tree = SeedTree(cfg.training.seed, launch.rank, launch.world_size)
    hardware = cfg.hardware
    source = cfg.source
    report = {
        "run": {
            "run_id": paths.run_id,
            "project": hardware.project_name,
            "dataset": cfg.dataset.name,
            "architecture": cfg.architecture.name,
            "config_hash": cfg.config_hash(),
            "recipe": None if source is None else str(source),
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "hardware": {
            "requested_device": hardware.device,
            "device": str(device),
            "device_type": _device_type(device),
            "cpu_count": os.cpu_count(),
            "usable_cpus": available_cpu_count(),
            "cuda": _cuda_summary(),
            "mps_available": mps_available(),
        },
        # What was applied (read back from torch) and, apart, what the recipe asked
        # for: `reproducible: false` asks for no strict mode, yet seeding still makes
        # cuDNN deterministic, and the mode says so.
        "determinism": {
            "mode": determinism_mode(flags := _torch_determinism()),
            "torch": flags,
            # The seed of str/bytes hashing (set ordering), null when randomized.
            "python_hash_seed": hash_seed_in_force(),
            "requested": {
                "reproducible": hardware.reproducible,
                "warn_only": hardware.deterministic_warn_only,
            },
        },
        "seeds": seed_tree.as_dict(),
        "threads": {
            "applied_threads": applied_threads,
            # Why that many: the recipe, the launcher's OMP_NUM_THREADS, or the CPUs
            # divided among the node's ranks (phase 2's choose_cpu_threads).
            "basis": thread_basis,
            "ranks_on_node": launch.local_world_size,
            "torch_num_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "num_workers": num_workers,
        },
        "paths": {
            "root": str(paths.root),
            "logs": str(paths.logs),
            "reports": str(paths.reports),
            "checkpoints": str(paths.checkpoints),
            "figures": str(paths.figures),
            "exports": str(paths.exports),
            "database": str(paths.database),
            "config": str(paths.get_config_path()),
        },
        "git": _git_section(git, paths.reports),
        "versions": {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "orchestrator_fsm": distribution_version(_DISTRIBUTION_NAME) or __version__,
        },
        "distributed": {
            "rank": launch.rank,
            "local_rank": launch.local_rank,
            "world_size": launch.world_size,
            "launcher": launch.launcher,
            "local_world_size": launch.local_world_size,
            "node_rank": launch.node_rank,
            "job_id": launch.job_id,
            "restart_count": launch.restart_count,
            # How the ranks found one another where no launcher named the job.
            "rendezvous": launch.rendezvous,
            "process_group_run": launch.group_run,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        },
        "environment": _reported_env(),
    }
    # Every section, not only git's and the environment's: a URL password can sit in
    # any string the recipe sets (dataset.name: postgres://user:password@host/db).
    redacted: dict[str, Any] = redact_secrets(report)
    return redacted


def _render_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple, Mapping)) and not value:
        return "(none)"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(_flatten(value, f"{name}."))
        else:
            rows.append((name, _render_value(value)))
    return rows


def render_report_lines(report: Mapping[str, Any]) -> list[str]:
    """The report as log lines: a ``[section]`` heading, then aligned ``key : value`` rows."""
    lines: list[str] = []
    for section, content in report.items():
        lines.append(f"[{section}]")
        if content is None:
            lines.append("  (not recorded)")
            continue
        if not isinstance(content, Mapping):
            lines.append(f"  {_render_value(content)}")
            continue
        rows = _flatten(content)
        if not rows:
            lines.append("  (none)")
            continue
        width = max(len(name) for name, _ in rows)
        lines.extend(f"  {name.ljust(width)} : {value}" for name, value in rows)
    return lines


def _summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The few lines of the report the console shows (the file has them all)."""
    run, hardware, versions = report["run"], report["hardware"], report["versions"]
    threads, launch = report["threads"], report["distributed"]
    mode = report["determinism"]["mode"]
    return [
        f"device {hardware['device']} (requested {hardware['requested_device']}), "
        f"torch {versions['torch']}, python {versions['python']}",
        f"rank {launch['rank']} of {launch['world_size']} ({launch['launcher']}), "
        f"{counted(threads['applied_threads'], 'thread')}, "
        f"{counted(threads['num_workers'], 'data worker')}",
        f"determinism {_MODE_WORDS.get(mode, mode)}, config {str(run['config_hash'])[:12]}",
    ]


class Reporter:
    """Phase 7: logs the environment report and saves it as ``reports/environment.json``.

    The run's file gets every line of the report; the console gets a short summary
    (the detail table is one multi-line record logged with ``extra=FILE_ONLY``), or everything when
    ``telemetry.console_level`` is DEBUG.
    """

    def log_initial_status(
        self,
        logger_instance: logging.Logger,
        cfg: Config,
        paths: RunPaths,
        device: Any,
        applied_threads: int,
        num_workers: int,
        *,
        launch: Launch | None = None,
        seed_tree: SeedTree | None = None,
        git: GitState | _FromRunDirectory | None = _READ_GIT_INFO,
        thread_basis: str | None = None,
    ) -> None:
        """Build the report (see :func:`build_environment_report`), save it, log it.

        The JSON file is written atomically before anything is logged, so a report that
        appears in the log is also on disk.
        """
        report = build_environment_report(
            cfg,
            paths,
            device,
            applied_threads,
            num_workers,
            launch=launch,
            seed_tree=seed_tree,
            git=git,
            thread_basis=thread_basis,
        )
        target = paths.reports / REPORT_FILE
        atomic_write_json(target, report)
        logger_instance.info("environment report for run %s", paths.run_id)
        for line in _summary_lines(report):
            logger_instance.info("%s", line)
        # The detail table is one record: its rows stay together in the file (no other
        # thread's line between them), and one record costs a tenth of ninety.
        logger_instance.info(
            "environment report detail:\n%s",
            "\n".join(render_report_lines(report)),
            extra=FILE_ONLY,
        )
        logger_instance.info("environment report saved to %s", target)


def step(run: RunContext) -> None:
    """Phase 7: ``reporter.log_initial_status(...)`` on rank 0; a no-op on other ranks."""
    if not run.is_main_process:
        return
    if run.device is None:
        run.device = resolve_device(run)
    reporter = run.deps.reporter
    # The package's reporter reports the run's own launch, seeds and the git state
    # phase 5 recorded; an injected reporter is called with the arguments its protocol
    # names, nothing more.
    manifest = run.manifest
    log_initial_status: Callable[..., None] = (
        partial(
            reporter.log_initial_status,
            launch=run.launch,
            seed_tree=run.seed_tree,
            git=_READ_GIT_INFO if manifest is None else manifest.git,
            thread_basis=run.thread_basis,
        )
        if isinstance(reporter, Reporter)
        else reporter.log_initial_status
    )
    log_initial_status(
        logger_instance=run.log,
        cfg=run.cfg,
        paths=run.require_paths(),
        device=run.device,
        applied_threads=run.applied_threads,
        num_workers=run.cfg.hardware.effective_num_workers,
    )
