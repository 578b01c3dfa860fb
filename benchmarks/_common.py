"""What every benchmark section shares: an isolated sandbox, recipes, statistics."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from orchestrator_fsm._process import EnvSnapshot

__all__ = [
    "ORCHARD_RECIPE",
    "REPO_ROOT",
    "WORKER",
    "Sandbox",
    "python_command",
    "quiet_stderr",
    "summarize",
]

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
#: The script that subprocess measurements run (by path, so the cwd can be anywhere).
WORKER: Final = Path(__file__).resolve().with_name("_worker.py")
#: The recipe shaped like the reference system's ``recipes/config_mini_cnn.yaml``.
ORCHARD_RECIPE: Final = REPO_ROOT / "tests" / "recipes" / "orchard_like_mini_cnn.yaml"

_DATASET: Final = "bench_data"
_ARCHITECTURE: Final = "bench_model"
_SEED: Final = 1234


def summarize(values_s: Sequence[float], *, scale: float = 1000.0) -> dict[str, float | int]:
    """min / median / p90 / max of ``values_s`` (seconds) in ms (or ``scale`` units)."""
    if not values_s:
        raise ValueError("summarize() needs at least one measurement, got none")
    ordered = sorted(values_s)
    p90 = (
        statistics.quantiles(ordered, n=10, method="inclusive")[8]
        if len(ordered) > 1
        else ordered[0]
    )
    return {
        "n": len(ordered),
        "min": round(ordered[0] * scale, 3),
        "median": round(statistics.median(ordered) * scale, 3),
        "p90": round(p90 * scale, 3),
        "max": round(ordered[-1] * scale, 3),
    }


class _TerminalSink(io.TextIOWrapper):
    """/dev/null that says it is a terminal, so the run log's console goes rich."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def quiet_stderr(*, as_terminal: bool = False) -> Iterator[None]:
    """Send ``sys.stderr`` (where the run's console log handler writes) to /dev/null.

    Every line is still formatted and written; only the screen is spared. With
    ``as_terminal`` the sink claims to be a terminal, so the console handler is the
    rich one an interactive user gets; otherwise it is the plain one of batch jobs.
    """
    if as_terminal:
        sink: io.TextIOWrapper = _TerminalSink(open(os.devnull, "wb"), encoding="utf-8")  # noqa: SIM115
    else:
        sink = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    with sink, contextlib.redirect_stderr(sink):
        yield


class Sandbox:
    """A temporary tree every benchmark writes into, removed on exit.

    On enter: ``XDG_CACHE_HOME`` points at ``<root>/cache`` (so ``setup_static_directories``
    never touches the user's cache) and the working directory is ``<root>/cwd``, which
    is not inside a git checkout (so the manifest's git step only probes, once). Both
    are restored on exit. :meth:`recipe` writes recipes whose outputs and lock file are
    inside the sandbox too; :meth:`env` is the environment for child processes.
    """

    def __init__(self, label: str) -> None:
        self._label = label
        self.root = Path()
        self.cwd = Path()
        self._old_cwd: str | None = None
        self._env: EnvSnapshot | None = None

    def __enter__(self) -> Sandbox:
        self.root = Path(tempfile.mkdtemp(prefix=f"orchestrator-fsm-bench-{self._label}-"))
        self.cwd = self.root / "cwd"
        self.cwd.mkdir()
        (self.root / "cache").mkdir()
        self._env = EnvSnapshot.capture(["XDG_CACHE_HOME"])
        os.environ["XDG_CACHE_HOME"] = str(self.root / "cache")
        self._old_cwd = os.getcwd()
        os.chdir(self.cwd)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._old_cwd is not None:
            os.chdir(self._old_cwd)
        if self._env is not None:
            self._env.restore()
        shutil.rmtree(self.root, ignore_errors=True)

    def env(self, *, bytecode_cache: bool = False) -> dict[str, str]:
        """The environment for a child process: ours, with the sandbox's cache dir.

        With ``bytecode_cache``, compiled bytecode is written to and read from
        ``<root>/pycache`` (``PYTHONPYCACHEPREFIX``) even where the calling environment
        sets ``PYTHONDONTWRITEBYTECODE``: a user's interpreter has the package's
        ``.pyc`` files, and recompiling it at every start would be measured otherwise.
        """
        env = dict(os.environ)
        env["XDG_CACHE_HOME"] = str(self.root / "cache")
        if bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(self.root / "pycache")
        return env

    def make_checkout(self, files: int = 20) -> Path:
        """Make the working directory a small git checkout: ``files`` committed files,
        one of them modified since, git's user and system configuration ignored."""
        env = {
            **os.environ,
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "bench",
            "GIT_AUTHOR_EMAIL": "bench@example.com",
            "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "bench@example.com",
        }
        for number in range(files):
            (self.cwd / f"module_{number}.py").write_text(f"VALUE = {number}\n")
        for args in (("init", "-q", "-b", "main"), ("add", "."), ("commit", "-q", "-m", "bench")):
            subprocess.run(["git", *args], cwd=self.cwd, env=env, check=True, capture_output=True)
        (self.cwd / "module_0.py").write_text("VALUE = -1\n")
        return self.cwd

    def orchard_recipe(self, name: str, *, strict: bool) -> Path:
        """Write ``<root>/<name>.yaml``: the reference system's mini-CNN recipe (the shape
        of ``tests/recipes/orchard_like_mini_cnn.yaml``), strict when ``strict``, with
        its outputs and lock file inside the sandbox."""
        data = yaml.safe_load(ORCHARD_RECIPE.read_text(encoding="utf-8"))
        data["hardware"]["reproducible"] = strict
        data["telemetry"]["output_dir"] = str(self.root / "outputs")
        data.setdefault("infrastructure", {})["lock"] = {
            "path": str(self.root / "locks" / f"{name}.lock")
        }
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def recipe(self, name: str, *, output_dir: Path | None = None) -> Path:
        """Write ``<root>/<name>.yaml``: a minimal CPU recipe with its own lock file.

        Runs go to ``output_dir`` (default ``<root>/outputs``); the lock file is
        ``<root>/locks/<name>.lock``, so recipes with different names never contend.
        """
        data: dict[str, Any] = {
            "dataset": {"name": _DATASET},
            "architecture": {"name": _ARCHITECTURE},
            "training": {"seed": _SEED},
            "hardware": {"device": "cpu"},
            "telemetry": {
                "output_dir": str(output_dir or self.root / "outputs"),
                "log_level": "INFO",
            },
            "infrastructure": {"lock": {"path": str(self.root / "locks" / f"{name}.lock")}},
        }
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path


def python_command(*args: str) -> list[str]:
    """``[python, worker, *args]`` with this interpreter."""
    return [sys.executable, str(WORKER), *args]
