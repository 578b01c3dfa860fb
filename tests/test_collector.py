"""The package leaves Python's cyclic garbage collector as it finds it.

Checked through what the collector itself reports (``gc.get_freeze_count()``,
``gc.isenabled()``, a weakly referenced cycle), never through timing.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import cli, write_recipe

from orchestrator_fsm.config.recipe import collector_paused, read_recipe
from orchestrator_fsm.errors import ConfigError
from orchestrator_fsm.lifecycle.machine import LifecycleMachine, Undo
from orchestrator_fsm.lifecycle.table import LifecycleState, table_steps


@pytest.fixture(autouse=True)
def _collector_as_found() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.enable()
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()
    if not was_enabled:
        gc.disable()


def test_collector_paused_restores_the_state_it_found() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_reading_a_recipe_puts_the_collector_back_even_when_the_yaml_is_bad(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        read_recipe(bad, "bad.yaml")
    assert gc.isenabled()


def test_lifecycle_steps_leave_the_collector_and_its_frozen_objects_alone() -> None:
    seen: dict[str, tuple[bool, int]] = {}

    def make(name: str) -> Callable[[], Undo | None]:
        def step() -> Undo:
            seen[name] = (gc.isenabled(), gc.get_freeze_count())
            return lambda: seen.__setitem__(f"undo {name}", (gc.isenabled(), 0))

        return step

    machine = LifecycleMachine({name: make(name) for name in table_steps()})
    machine.run_until(LifecycleState.REPORTED)
    machine.cleanup()
    assert seen and all(state == (True, 0) for state in seen.values()), seen
    assert gc.get_freeze_count() == 0


def test_importing_the_package_freezes_nothing_and_garbage_from_before_is_collected() -> None:
    # A fresh interpreter: the package's modules are imported through its lazy names.
    script = textwrap.dedent(
        """
        import gc, weakref

        class Node:
            other = None

        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
        import orchestrator_fsm
        orchestrator_fsm.Config, orchestrator_fsm.RootOrchestrator
        assert gc.get_freeze_count() == 0, gc.get_freeze_count()
        assert gc.isenabled()
        gc.collect()
        assert ref() is None, "garbage from before the import was never collected"
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


UNCLOSED_FILES_ENTRY = """
import os

HERE = os.path.dirname(os.path.abspath(__file__))
LOG = open(os.path.join(HERE, "plain.txt"), "w")  # never closed: flushed as Python exits


class Holder:
    pass


HOLDER = Holder()  # in a cycle: only the collector frees it
HOLDER.me, HOLDER.file = HOLDER, open(os.path.join(HERE, "cyclic.txt"), "w")


def main(orch):
    LOG.write("plain\\n")
    HOLDER.file.write("cyclic\\n")
"""


@pytest.mark.slow
def test_files_an_entry_module_never_closes_are_flushed_when_the_command_exits(
    tmp_path: Path,
) -> None:
    # Python flushes them as it finalizes the entry's module. A gc.freeze() after the
    # entry was imported (tried, to spare the exit's collections a walk through torch)
    # left both files empty: the frozen module was finalized too late.
    (tmp_path / "entry.py").write_text(UNCLOSED_FILES_ENTRY, encoding="utf-8")
    recipe = write_recipe(tmp_path)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    done = cli("run", str(recipe), "--entry", "entry.py:main", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "plain.txt").read_text(encoding="utf-8") == "plain\n"
    assert (tmp_path / "cyclic.txt").read_text(encoding="utf-8") == "cyclic\n"
