"""An `--entry` that cannot be called as fn(orchestrator) is refused before the run
starts: exit 2, one line naming its signature, no run directory. The real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import minimal_recipe

COMMAND = str(Path(sys.executable).parent / "orchestrator-fsm")

ENTRIES = """
def two(orch, extra):
    pass

def none():
    pass

def keyword_only(*, orch):
    pass

def with_options(orch, *, epochs=3, **more):
    print("with_options ran")

def any_arguments(*args):
    print("any_arguments ran")

class Trainer:
    def __call__(self, orch):
        print("Trainer ran")

trainer = Trainer()
"""


def run(tmp_path: Path, function: str) -> subprocess.CompletedProcess[str]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(minimal_recipe(tmp_path)), encoding="utf-8")
    (tmp_path / "entries.py").write_text(ENTRIES, encoding="utf-8")
    return subprocess.run(
        [COMMAND, "run", str(recipe), "--entry", f"entries.py:{function}"],
        cwd=tmp_path,
        env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("function", "shown"),
    [
        ("two", "two(orch, extra) (missing a required argument: 'extra')"),
        ("none", "none() (too many positional arguments)"),
        ("keyword_only", "keyword_only(*, orch)"),
    ],
)
def test_an_entry_with_the_wrong_signature_exits_2_before_the_run(
    tmp_path: Path, function: str, shown: str
) -> None:
    result = run(tmp_path, function)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: --entry 'entries.py:{function}' is called as {function}(")
    assert shown in line
    assert not (tmp_path / "outputs").exists()  # nothing was started


@pytest.mark.slow
@pytest.mark.parametrize("function", ["with_options", "any_arguments", "trainer"])
def test_entries_callable_with_the_orchestrator_alone_run(tmp_path: Path, function: str) -> None:
    result = run(tmp_path, function)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "status: completed"
