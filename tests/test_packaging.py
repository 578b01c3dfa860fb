"""Set-up: what `make demo` installs, and a build without setuptools warnings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def make_dry_run(target: str, venv: Path) -> list[str]:
    """The commands ``make TARGET`` would run for a fresh ``venv`` (``make -n``)."""
    # Under `make test` this runs in a sub-make: without the parent's flags and level,
    # and without the "Entering directory" lines a sub-make prints.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_the_runtime_only(tmp_path: Path) -> None:
    commands = make_dry_run("demo", tmp_path / "venv")
    installs = [c for c in commands if "pip install" in c and "--upgrade pip" not in c]
    assert any(c.endswith("pip install --quiet -e .") for c in installs), installs
    assert not [c for c in installs if "[" in c], installs
    assert commands[-1].endswith("orchestrator-fsm run")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("target", ["test", "test-fast", "lint"])
def test_make_test_and_lint_install_the_dev_tools(tmp_path: Path, target: str) -> None:
    commands = make_dry_run(target, tmp_path / "venv")
    assert any('-e ".[test,dev,mlflow,tensorboard,report]"' in c for c in commands), commands


def test_pyproject_applies_without_setuptools_warnings() -> None:
    code = """
import warnings
from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    dist = apply_configuration(Distribution(), "pyproject.toml")
    dist.finalize_options()
for w in caught:
    print("WARNING", w.category.__name__, str(w.message).splitlines()[0])
print("license", dist.metadata.license_expression, dist.metadata.license_files)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stdout, result.stdout
    assert result.stdout.splitlines()[-1] == "license MIT ['LICENSE']"
