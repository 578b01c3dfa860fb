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
        "entry", "entry_argv", "rerun_of",
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


def test_the_lazy_exports_name_what_type_checkers_see() -> None:
    import ast

    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    (guarded,) = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    typed = {
        alias.name: node.module
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == orchestrator_fsm._EXPORTS
    assert set(orchestrator_fsm.__all__) == {*typed, "__version__"}
    for name, module in typed.items():
        assert getattr(orchestrator_fsm, name).__module__.startswith("orchestrator_fsm"), name
        assert getattr(orchestrator_fsm, name) is getattr(__import__(module, fromlist=[name]), name)


def test_importing_the_package_imports_neither_torch_nor_numpy() -> None:
    import subprocess
    import sys

    code = "import sys, orchestrator_fsm; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
    result = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom orchestrator_fsm import RootOrchestrator\n"
         "print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "True"


def test_importing_the_package_imports_no_optional_extra() -> None:
    import subprocess
    import sys

    extras = "{'jinja2', 'mlflow', 'tensorboard', 'orchestrator_fsm.page'}"
    code = f"import sys, orchestrator_fsm; print(sorted({extras} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error() -> None:
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        orchestrator_fsm.Nope  # noqa: B018


#: Modules beside the root that are public too, each with its documented names: the
#: bundled demo (the CLI's default entry, reused by the examples) and the MLflow observer.
PUBLIC_MODULES = {"orchestrator_fsm.demo.pipeline", "orchestrator_fsm.mlflow_observer"}


def test_the_examples_use_only_the_public_api() -> None:
    import ast
    import importlib

    examples = PACKAGE.parent / "examples"
    private = []
    for path in sorted(examples.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [(node.module, [alias.name for alias in node.names])]
            else:
                continue
            for module, names in modules:
                if module.split(".")[0] != "orchestrator_fsm":
                    continue
                if module == "orchestrator_fsm" or module in PUBLIC_MODULES:
                    public = set(importlib.import_module(module).__all__)
                    private += [
                        f"{path.name}: {module}.{n}" for n in names or [] if n not in public
                    ]
                else:
                    private.append(f"{path.name}: {module}")
    assert private == []
