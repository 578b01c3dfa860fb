"""The command's start-up: the quick sub-commands never import torch, and Ctrl-C before
a run starts is one line and exit 130. Every test runs the real console script."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import minimal_recipe, wait_for

COMMAND = str(Path(sys.executable).parent / "orchestrator-fsm")


def imported_modules(
    argv: list[str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``orchestrator-fsm ARGV`` with ``-X importtime`` (its environment variable);
    the result and the names of every module the process imported."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1", XDG_CACHE_HOME=str(cwd / "cache"))
    result = subprocess.run(
        [COMMAND, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", result.stderr, re.M))
    assert "orchestrator_fsm" in modules, result.stderr[-2000:]
    return result, modules


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A recipe and a finished run directory to validate and inspect."""
    from orchestrator_fsm import Config, RootOrchestrator

    root = tmp_path_factory.mktemp("startup")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(minimal_recipe(root)), encoding="utf-8")
    with RootOrchestrator(Config.from_recipe(recipe)) as orch:
        pass
    assert orch.paths is not None
    return {"root": root, "recipe": recipe, "run": orch.paths.root}


QUICK_COMMANDS = {
    "--help": ["--help"],
    "--version": ["--version"],
    "no command": [],
    "run --help": ["run", "--help"],
    "validate": ["validate", "{recipe}"],
    "validate, a bad recipe": ["validate", "{recipe}", "--set", "training.seed=-1"],
    "inspect": ["inspect", "{run}"],
    "inspect --json": ["inspect", "{run}", "--json"],
    "diagram": ["diagram"],
    "diagram --format dot": ["diagram", "--format", "dot"],
    "diagram --output x.mmd": ["diagram", "--output", "{root}/x.mmd"],
    "runs": ["runs", "{root}/outputs"],
    "runs --json": ["runs", "{root}/outputs", "--json"],
    "report": ["report", "{run}", "--output", "{root}/page.html"],
}


@pytest.mark.parametrize("argv", QUICK_COMMANDS.values(), ids=QUICK_COMMANDS.keys())
def test_quick_commands_never_import_torch(workspace: dict[str, Path], argv: list[str]) -> None:
    argv = [word.format(**workspace) for word in argv]
    result, modules = imported_modules(argv, workspace["root"])
    assert result.returncode in (0, 2), result.stderr[-2000:]
    # Jinja2 (the report extra) only for the page that needs it.
    extras = {"torch", "numpy", "mlflow"} | (set() if argv[:1] == ["report"] else {"jinja2"})
    heavy = sorted(m for m in modules if m.split(".")[0] in extras)
    assert heavy == [], f"orchestrator-fsm {' '.join(argv)} imported {heavy[:5]}"


def test_run_does_import_torch_so_the_probe_can_see_it(workspace: dict[str, Path]) -> None:
    # The other tests are only worth something if the probe sees torch when it is there.
    entry = workspace["root"] / "noop.py"
    entry.write_text("def main(orch):\n    pass\n", encoding="utf-8")
    result, modules = imported_modules(
        ["run", str(workspace["recipe"]), "--entry", f"{entry}:main"], workspace["root"]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch" in modules


SLOW_IMPORT = """
import pathlib, time
pathlib.Path({marker!r}).write_text("importing")
import torch  # the first seconds of a real run: importing torch and the pipeline
time.sleep(120)

def main(orch):
    pass
"""


def _default_sigint() -> None:
    # A child started without job control inherits SIGINT as ignored; a terminal's
    # Ctrl-C reaches a process with the default disposition, as here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_the_run_starts_up_is_one_line_and_exit_130(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(minimal_recipe(tmp_path)), encoding="utf-8")
    marker = tmp_path / "importing"
    entry = tmp_path / "slow_import.py"
    entry.write_text(SLOW_IMPORT.format(marker=str(marker)), encoding="utf-8")
    proc = subprocess.Popen(
        [COMMAND, "run", str(recipe), "--entry", f"{entry}:main"],
        cwd=tmp_path,
        env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        wait_for(lambda: [marker] if marker.exists() else [], proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.splitlines() == ["orchestrator-fsm: interrupted (SIGINT) before the run started"]
    assert "Traceback" not in out
    assert not (tmp_path / "outputs").exists()
