from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))


def minimal_recipe(output_dir: Path, **sections: Any) -> dict[str, Any]:
    """The smallest valid recipe, writing under ``output_dir`` with its own lock file."""
    data: dict[str, Any] = {
        "dataset": {"name": "toy_digits"},
        "architecture": {"name": "tiny_mlp"},
        "training": {"seed": 1234},
        "hardware": {"device": "cpu"},
        "telemetry": {"output_dir": str(output_dir / "outputs"), "log_level": "INFO"},
        "infrastructure": {"lock": {"path": str(output_dir / "locks" / "run.lock")}},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def write_recipe(
    directory: Path,
    recipe: Mapping[str, Any] | str | bytes | None = None,
    name: str = "recipe.yaml",
    **sections: Any,
) -> Path:
    """``directory/name`` holding ``recipe``: a mapping written as YAML, text dedented,
    bytes as they are; without one, :func:`minimal_recipe` of ``directory`` updated with
    ``sections``."""
    path = directory / name
    if recipe is None:
        recipe = minimal_recipe(directory, **sections)
    elif sections:
        raise TypeError("pass either a recipe or sections to update the minimal one")
    if isinstance(recipe, bytes):
        path.write_bytes(recipe)
    elif isinstance(recipe, str):
        path.write_text(textwrap.dedent(recipe), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(dict(recipe)), encoding="utf-8")
    return path


def write_job(tmp_path: Path, script: str, **sections: Any) -> tuple[Path, Path]:
    """A multi-process job's recipe (:func:`minimal_recipe` of ``tmp_path`` with
    ``sections``, a 120 s join timeout, no heartbeat) and its ``train.py`` holding
    ``script``; returns both paths."""
    recipe = tmp_path / "recipe.yaml"
    data = minimal_recipe(tmp_path, **sections)
    data.setdefault("infrastructure", {})["join_timeout_s"] = 120
    data["telemetry"]["heartbeat_s"] = 0
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    path = tmp_path / "train.py"
    path.write_text(script, encoding="utf-8")
    return recipe, path


def run_dirs(output_dir: Path) -> list[Path]:
    """The run directories in ``output_dir``, sorted by name; none when it does not exist.
    Hidden folders (the job index) are not runs."""
    if not output_dir.exists():
        return []
    return sorted(p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def only_run_dir(output_dir: Path) -> Path:
    """The one run directory in ``output_dir``; fails unless there is exactly one."""
    dirs = run_dirs(output_dir)
    assert len(dirs) == 1, f"expected one run directory, found {dirs}"
    return dirs[0]


def cli_command(*argv: str) -> list[str]:
    """The command line of ``orchestrator-fsm ARGV`` in this interpreter."""
    return [sys.executable, "-m", "orchestrator_fsm", *argv]


def cli(
    *argv: str, cwd: Path, env: Mapping[str, str] | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """``orchestrator-fsm ARGV`` run to its end in ``cwd`` with ``env`` (default: this
    process's), its output captured as text on a 250-column console (tables do not wrap);
    a non-zero exit is returned, not raised."""
    return subprocess.run(
        cli_command(*argv),
        cwd=cwd,
        env={**(os.environ if env is None else env), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def isolated(tmp_path: Path) -> list[str]:
    """CLI overrides that keep a run's outputs and lock inside ``tmp_path``."""
    return [
        "--set",
        f"telemetry.output_dir={tmp_path / 'outputs'}",
        "--set",
        f"infrastructure.lock.path={tmp_path / 'x.lock'}",
    ]


def run_torchrun(
    cwd: Path, script: Path, *argv: str, nproc: int, timeout_s: float = 180
) -> tuple[str, str]:
    """``stdout, stderr`` of ``torchrun --standalone --nproc_per_node=nproc script argv``
    run in ``cwd``, one intra-op thread per rank; fails unless every rank exits 0 within
    ``timeout_s``. A launcher around the test run (its RANK, SLURM_PROCID, ...) is not
    passed on."""
    from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS

    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV_VARS}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    result = subprocess.run(
        [*command, f"--nproc_per_node={nproc}", str(script), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout, result.stderr


def wait_for(
    found: Callable[[], list[Path]], proc: subprocess.Popen[str], timeout_s: float = 120.0
) -> list[Path]:
    """What ``found()`` returns once it is not empty; fails if ``proc`` exits first or
    ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        hits = found()
        if hits:
            return hits
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run exited with {proc.returncode} too early:\n{out}\n{err}")
        time.sleep(0.05)
    pytest.fail("the run never reached the point waited for")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs ``--dist loadgroup``) every test on the one
    SLURM cluster goes to one worker, one job at a time: two nodes of 2 CPUs cannot hold
    two tests' jobs at once without queueing them past their waits.

    A module whose module-scoped fixture is costly (a child per fault, a demo run, a
    browser) marks itself ``pytest.mark.xdist_group(<module>)``: loadgroup otherwise hands
    its tests to every worker and each makes the fixture again (test_faults.py's three
    matrices ran three times over)."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))
    # Slow tests first (each module keeps its order): the workers end on short tests, not
    # on one worker finishing a long one while the others wait.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# test_faults.py counts what it injected; under pytest-xdist each worker counts its share
# and the controller adds them up as workers finish.
_WORKER_TALLIES: Counter[str] = Counter()


def _fault_tally() -> dict[str, int]:
    faults = sys.modules.get("test_faults")
    return dict(getattr(faults, "TALLY", None) or {})


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fault_tally"] = _fault_tally()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    _WORKER_TALLIES.update(getattr(node, "workeroutput", {}).get("fault_tally", {}))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many faults, signals and runs test_faults.py injected, sent and launched."""
    tally = _WORKER_TALLIES + Counter(_fault_tally())
    if tally:
        counts = ", ".join(f"{key}: {value}" for key, value in sorted(tally.items()))
        terminalreporter.write_line(f"fault tally: {counts}")


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Any]:
    from orchestrator_fsm.config import Config

    def build(**sections: Any) -> Any:
        return Config.from_dict(minimal_recipe(tmp_path, **sections))

    return build


@pytest.fixture(scope="session")
def _empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made, once per test process."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def existing_mlflow_store(_empty_mlflow_store: Path) -> Callable[[Path], Path]:
    """Puts an MLflow store at ``output_dir/mlflow.db`` (the observer's default), empty
    but with its tables made, as a user's earlier run leaves it: making the tables of a
    new store costs 2-3 s of CPU, so only the tests of a first store pay it
    (test_mlflow_observer.py's first test)."""

    def place(output_dir: Path) -> Path:
        output_dir.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copyfile(_empty_mlflow_store, output_dir / "mlflow.db"))

    return place


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """Whatever a test does to torch flags, env vars or loggers is undone afterwards."""
    import logging
    import os

    import torch

    env = dict(os.environ)
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    package_logger = logging.getLogger("orchestrator_fsm")
    handlers = list(package_logger.handlers)
    level, propagate = package_logger.level, package_logger.propagate
    yield
    os.environ.clear()
    os.environ.update(env)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
    for handler in list(package_logger.handlers):
        if handler not in handlers:
            package_logger.removeHandler(handler)
            handler.close()
    package_logger.setLevel(level)
    package_logger.propagate = propagate
