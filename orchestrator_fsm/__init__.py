"""orchestrator-fsm: the lifecycle of an ML experiment as an explicit state machine.

Everything public is re-exported here; the modules behind these names are internal.
They are imported on first use (PEP 562), so ``import orchestrator_fsm`` and the
command line's quick sub-commands never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

from orchestrator_fsm._startup import take_over
from orchestrator_fsm._version import __version__

# First, before anything slower: in the orchestrator-fsm command only, a Ctrl-C while
# its modules are imported is one line and exit 130 (see _startup).
take_over()
del take_over

if TYPE_CHECKING:
    from orchestrator_fsm.checkpoints import Checkpoint, CheckpointStore
    from orchestrator_fsm.config import (
        ArchitectureConfig,
        Config,
        DatasetConfig,
        HardwareConfig,
        InfrastructureConfig,
        LockConfig,
        MissingKeyError,
        TelemetryConfig,
        TrainingConfig,
    )
    from orchestrator_fsm.config.schema import pipeline_schema
    from orchestrator_fsm.distributed import (
        Launch,
        discover_launch,
        get_local_rank,
        get_rank,
        get_world_size,
        slurm_master_endpoint,
    )
    from orchestrator_fsm.errors import (
        ConfigError,
        DeviceError,
        EntryPointError,
        InfrastructureError,
        LifecycleError,
        LockContendedError,
        OrchestratorError,
        RunInterrupted,
    )
    from orchestrator_fsm.layout import RunPaths
    from orchestrator_fsm.lifecycle.machine import LifecycleMachine, TransitionRecord
    from orchestrator_fsm.lifecycle.record import (
        ErrorSummary,
        LastMetric,
        RunRecord,
        infer_status,
        read_run,
        run_status,
    )
    from orchestrator_fsm.lifecycle.table import LifecycleState
    from orchestrator_fsm.observers import Observer
    from orchestrator_fsm.orchestrator import RootOrchestrator, current_run
    from orchestrator_fsm.phases.determinism import make_generator, set_seed, worker_init_fn
    from orchestrator_fsm.phases.device import to_device_obj
    from orchestrator_fsm.phases.filesystem import setup_static_directories
    from orchestrator_fsm.phases.lock import InfrastructureManager
    from orchestrator_fsm.phases.logging import Logger
    from orchestrator_fsm.phases.manifest import AuditSaver
    from orchestrator_fsm.phases.report import Reporter
    from orchestrator_fsm.phases.runtime import apply_cpu_threads, configure_system_libraries
    from orchestrator_fsm.phases.timing import TimeTracker
    from orchestrator_fsm.progress_bar import ProgressBar, progress
    from orchestrator_fsm.protocols import (
        AuditSaverProtocol,
        InfraManagerProtocol,
        ReporterProtocol,
        TimeTrackerProtocol,
    )
    from orchestrator_fsm.redaction import redact_secrets
    from orchestrator_fsm.seeds import SeedTree

# Where each public name lives; the names above, for type checkers, are the same.
_EXPORTS: Final[dict[str, str]] = {
    "ArchitectureConfig": "orchestrator_fsm.config",
    "Config": "orchestrator_fsm.config",
    "DatasetConfig": "orchestrator_fsm.config",
    "HardwareConfig": "orchestrator_fsm.config",
    "InfrastructureConfig": "orchestrator_fsm.config",
    "LockConfig": "orchestrator_fsm.config",
    "MissingKeyError": "orchestrator_fsm.config",
    "TelemetryConfig": "orchestrator_fsm.config",
    "TrainingConfig": "orchestrator_fsm.config",
    "pipeline_schema": "orchestrator_fsm.config.schema",
    "Checkpoint": "orchestrator_fsm.checkpoints",
    "CheckpointStore": "orchestrator_fsm.checkpoints",
    "Launch": "orchestrator_fsm.distributed",
    "discover_launch": "orchestrator_fsm.distributed",
    "get_local_rank": "orchestrator_fsm.distributed",
    "get_rank": "orchestrator_fsm.distributed",
    "get_world_size": "orchestrator_fsm.distributed",
    "slurm_master_endpoint": "orchestrator_fsm.distributed",
    "ConfigError": "orchestrator_fsm.errors",
    "DeviceError": "orchestrator_fsm.errors",
    "EntryPointError": "orchestrator_fsm.errors",
    "InfrastructureError": "orchestrator_fsm.errors",
    "LifecycleError": "orchestrator_fsm.errors",
    "LockContendedError": "orchestrator_fsm.errors",
    "OrchestratorError": "orchestrator_fsm.errors",
    "RunInterrupted": "orchestrator_fsm.errors",
    "LifecycleMachine": "orchestrator_fsm.lifecycle.machine",
    "TransitionRecord": "orchestrator_fsm.lifecycle.machine",
    "ErrorSummary": "orchestrator_fsm.lifecycle.record",
    "LastMetric": "orchestrator_fsm.lifecycle.record",
    "RunRecord": "orchestrator_fsm.lifecycle.record",
    "infer_status": "orchestrator_fsm.lifecycle.record",
    "read_run": "orchestrator_fsm.lifecycle.record",
    "run_status": "orchestrator_fsm.lifecycle.record",
    "LifecycleState": "orchestrator_fsm.lifecycle.table",
    "Observer": "orchestrator_fsm.observers",
    "RootOrchestrator": "orchestrator_fsm.orchestrator",
    "current_run": "orchestrator_fsm.orchestrator",
    "SeedTree": "orchestrator_fsm.seeds",
    "make_generator": "orchestrator_fsm.phases.determinism",
    "set_seed": "orchestrator_fsm.phases.determinism",
    "worker_init_fn": "orchestrator_fsm.phases.determinism",
    "to_device_obj": "orchestrator_fsm.phases.device",
    "RunPaths": "orchestrator_fsm.layout",
    "setup_static_directories": "orchestrator_fsm.phases.filesystem",
    "InfrastructureManager": "orchestrator_fsm.phases.lock",
    "Logger": "orchestrator_fsm.phases.logging",
    "AuditSaver": "orchestrator_fsm.phases.manifest",
    "Reporter": "orchestrator_fsm.phases.report",
    "apply_cpu_threads": "orchestrator_fsm.phases.runtime",
    "configure_system_libraries": "orchestrator_fsm.phases.runtime",
    "TimeTracker": "orchestrator_fsm.phases.timing",
    "ProgressBar": "orchestrator_fsm.progress_bar",
    "progress": "orchestrator_fsm.progress_bar",
    "AuditSaverProtocol": "orchestrator_fsm.protocols",
    "InfraManagerProtocol": "orchestrator_fsm.protocols",
    "ReporterProtocol": "orchestrator_fsm.protocols",
    "TimeTrackerProtocol": "orchestrator_fsm.protocols",
    "redact_secrets": "orchestrator_fsm.redaction",
}

__all__ = [
    "ArchitectureConfig",
    "AuditSaver",
    "AuditSaverProtocol",
    "Checkpoint",
    "CheckpointStore",
    "Config",
    "ConfigError",
    "DatasetConfig",
    "DeviceError",
    "EntryPointError",
    "ErrorSummary",
    "HardwareConfig",
    "InfraManagerProtocol",
    "InfrastructureConfig",
    "InfrastructureError",
    "InfrastructureManager",
    "LastMetric",
    "Launch",
    "LifecycleError",
    "LifecycleMachine",
    "LifecycleState",
    "LockConfig",
    "LockContendedError",
    "Logger",
    "MissingKeyError",
    "Observer",
    "OrchestratorError",
    "ProgressBar",
    "Reporter",
    "ReporterProtocol",
    "RootOrchestrator",
    "RunInterrupted",
    "RunPaths",
    "RunRecord",
    "SeedTree",
    "TelemetryConfig",
    "TimeTracker",
    "TimeTrackerProtocol",
    "TrainingConfig",
    "TransitionRecord",
    "__version__",
    "apply_cpu_threads",
    "configure_system_libraries",
    "current_run",
    "discover_launch",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "infer_status",
    "make_generator",
    "pipeline_schema",
    "progress",
    "read_run",
    "redact_secrets",
    "run_status",
    "set_seed",
    "setup_static_directories",
    "slurm_master_endpoint",
    "to_device_obj",
    "worker_init_fn",
]


def __getattr__(name: str) -> Any:
    """The public ``name``, imported from its module the first time it is asked for."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
