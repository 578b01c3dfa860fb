"""The public names of the contract, importable from the package root, and nothing
inside the package importing that root from below."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import orchestrator_fsm
from orchestrator_fsm import RootOrchestrator

PACKAGE = Path(orchestrator_fsm.__file__).parent

CONTRACT_NAMES = {
    "Config", "RootOrchestrator", "LifecycleState", "LifecycleMachine", "TransitionRecord",
    "RunPaths", "set_seed", "worker_init_fn", "apply_cpu_threads",
    "configure_system_libraries", "setup_static_directories", "Logger", "AuditSaver",
    "InfrastructureManager", "to_device_obj", "Reporter", "TimeTracker", "get_rank",
    "get_local_rank", "get_world_size", "InfraManagerProtocol", "ReporterProtocol",
    "TimeTrackerProtocol", "AuditSaverProtocol", "OrchestratorError", "ConfigError",
    "LifecycleError", "InfrastructureError", "LockContendedError", "DeviceError",
    # the run record API
    "RunRecord", "ErrorSummary", "read_run", "infer_status",
}  # fmt: skip


def test_every_contract_name_is_exported_from_the_package_root() -> None:
    missing = sorted(CONTRACT_NAMES - set(orchestrator_fsm.__all__))
    assert missing == []
    for name in orchestrator_fsm.__all__:
        assert hasattr(orchestrator_fsm, name), name


def test_the_constructor_is_the_reference_one() -> None:
    parameters = inspect.signature(RootOrchestrator).parameters.values()
    reference = [p.name for p in parameters if p.kind is not p.KEYWORD_ONLY]
    assert reference == [
        "cfg", "infra_manager", "reporter", "time_tracker", "audit_saver",
        "log_initializer", "seed_setter", "thread_applier", "system_configurator",
        "static_dir_setup", "device_resolver", "rank", "local_rank",
    ]  # fmt: skip
    # What goes beyond the reference is keyword-only, so no reference call changes meaning.
    beyond = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]
    assert beyond == [
        "signal_callbacks", "world_size", "resume", "force_resume", "observers", "sweep",
        "entry", "rerun_of",
    ]  # fmt: skip


def test_no_module_of_the_package_imports_the_package_root() -> None:
    root_import = re.compile(
        r"^\s*(from orchestrator_fsm import |import orchestrator_fsm\s*$)", re.M
    )
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if root_import.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
