"""orchestrator-fsm: the lifecycle of an ML experiment as an explicit state machine.

Everything public is re-exported here; the modules behind these names are internal.
"""

from orchestrator_fsm._version import __version__
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
from orchestrator_fsm.orchestrator import RootOrchestrator
from orchestrator_fsm.phases.determinism import (
    SeedTree,
    make_generator,
    set_seed,
    worker_init_fn,
)
from orchestrator_fsm.phases.device import to_device_obj
from orchestrator_fsm.phases.filesystem import RunPaths, setup_static_directories
from orchestrator_fsm.phases.guarding import InfrastructureManager
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

__all__ = [
    "ArchitectureConfig",
    "AuditSaver",
    "AuditSaverProtocol",
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
    "to_device_obj",
    "worker_init_fn",
]
