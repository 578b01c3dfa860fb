"""Phase 2: CPU thread budget, library defaults, and their undo."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from orchestrator_fsm._process import undoable
from orchestrator_fsm.phases.runtime import (
    THREAD_ENV_VARS,
    RuntimeState,
    apply_cpu_threads,
    available_cpu_count,
    choose_cpu_threads,
    configure_system_libraries,
)

ENV_VARS = (*THREAD_ENV_VARS, "MPLBACKEND")


@pytest.fixture(autouse=True)
def _restore_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    state = RuntimeState.capture()
    yield
    state.restore()


@pytest.fixture
def without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """matplotlib reported as not installed, whether or not it is (None blocks imports)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


FAKE_MATPLOTLIB = '''
"""Stand-in for matplotlib (not installed here): records the backend it is given."""
calls = []
_backend = "TkAgg"


def use(backend, force=True):
    global _backend
    calls.append(backend)
    _backend = backend


def get_backend():
    return _backend
'''


@pytest.fixture
def fake_matplotlib_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An importable, not yet imported ``matplotlib`` package on sys.path."""
    package = tmp_path / "site" / "matplotlib"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(FAKE_MATPLOTLIB))
    previous = sys.modules.pop("matplotlib", None)
    monkeypatch.syspath_prepend(str(package.parent))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("matplotlib", None)
    if previous is not None:
        sys.modules["matplotlib"] = previous


def test_explicit_cpu_threads_are_applied_to_torch_and_exported() -> None:
    applied = apply_cpu_threads(num_workers=4, cpu_threads=1)

    assert applied == 1
    assert torch.get_num_threads() == 1
    assert {name: os.environ[name] for name in THREAD_ENV_VARS} == dict.fromkeys(
        THREAD_ENV_VARS, "1"
    )


def test_auto_threads_leave_a_cpu_for_each_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)

    assert apply_cpu_threads(2) == 4
    assert torch.get_num_threads() == 4
    assert os.environ["OMP_NUM_THREADS"] == "4"


def test_auto_threads_divide_the_usable_cpus_among_the_ranks_of_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 22: under torchrun, 2 ranks on 2 CPUs each took 2 threads.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert apply_cpu_threads(1, ranks_on_node=2) == 3
    assert choose_cpu_threads(0, ranks_on_node=4) == (
        2,
        "8 usable CPUs / 4 ranks on this node - 0 data workers",
    )
    assert choose_cpu_threads(0, ranks_on_node=16)[0] == 1


def test_the_ranks_of_the_node_default_to_the_launchers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    for name, value in {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(name, value)
    assert apply_cpu_threads(0) == 2


def test_a_launchers_omp_num_threads_is_respected_unless_the_recipe_sets_a_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what torchrun sets for several ranks
    assert choose_cpu_threads(0, ranks_on_node=2) == (1, "OMP_NUM_THREADS=1 from the launcher")
    assert apply_cpu_threads(0, ranks_on_node=2) == 1
    assert choose_cpu_threads(0, 3, ranks_on_node=2) == (3, "hardware.cpu_threads")
    # One process alone on its node keeps its own budget, as before.
    assert choose_cpu_threads(0, ranks_on_node=1)[0] == 8


def test_auto_threads_never_drop_below_one() -> None:
    assert apply_cpu_threads(available_cpu_count() + 10) == 1
    assert torch.get_num_threads() == 1


def test_auto_threads_use_every_available_cpu_without_workers() -> None:
    assert apply_cpu_threads(0) == available_cpu_count()


def test_available_cpus_follow_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert available_cpu_count() == 1


def test_available_cpus_fall_back_to_cpu_count_without_affinity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    assert available_cpu_count() == 7
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert available_cpu_count() == 1


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_invalid_num_workers_is_rejected(bad: object) -> None:
    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match=r"num_workers must be an integer >= 0"):
        apply_cpu_threads(bad)  # type: ignore[arg-type]
    assert torch.get_num_threads() == threads
    assert "OMP_NUM_THREADS" not in os.environ


@pytest.mark.parametrize("bad", [0, -2, 2.0, False])
def test_invalid_cpu_threads_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match=r"cpu_threads must be an integer >= 1 or None"):
        apply_cpu_threads(0, cpu_threads=bad)  # type: ignore[arg-type]


def test_the_phase_undo_reverts_threads_environment_and_warning_filters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MKL_NUM_THREADS", "13")
    before = RuntimeState.capture()
    filters_before = list(warnings.filters)

    def configure() -> None:
        apply_cpu_threads(0, cpu_threads=1 if before.num_threads != 1 else 2)
        configure_system_libraries()

    _, undo = undoable(configure, before)
    assert RuntimeState.capture() != before
    assert os.environ["MKL_NUM_THREADS"] != "13"

    undo()

    assert RuntimeState.capture() == before
    assert torch.get_num_threads() == before.num_threads
    assert os.environ["MKL_NUM_THREADS"] == "13"
    assert "OMP_NUM_THREADS" not in os.environ
    assert warnings.filters == filters_before


def test_restore_never_touches_interop_threads_that_did_not_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(count: int) -> None:
        raise AssertionError(f"set_num_interop_threads({count}) called")

    before = RuntimeState.capture()
    apply_cpu_threads(1)
    monkeypatch.setattr(torch, "set_num_interop_threads", refuse)
    before.restore()
    assert torch.get_num_interop_threads() == before.num_interop_threads


def test_restore_logs_an_interop_refusal_and_restores_the_rest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    before = RuntimeState.capture()
    _, undo = undoable(
        lambda: apply_cpu_threads(0, cpu_threads=1 if before.num_threads != 1 else 2), before
    )
    attempted: list[int] = []

    def refuse(count: int) -> None:
        attempted.append(count)
        raise RuntimeError("cannot set number of interop threads after parallel work has started")

    monkeypatch.setattr(torch, "get_num_interop_threads", lambda: before.num_interop_threads + 3)
    monkeypatch.setattr(torch, "set_num_interop_threads", refuse)
    with caplog.at_level(logging.WARNING, logger="orchestrator_fsm.phases.runtime"):
        undo()

    assert attempted == [before.num_interop_threads]
    assert "could not restore torch inter-op threads" in caplog.text
    assert torch.get_num_threads() == before.num_threads
    assert "OMP_NUM_THREADS" not in os.environ


def test_dataloader_worker_count_warning_is_quieted_and_comes_back_after_restore() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = RuntimeState.capture()
        loader = DataLoader(TensorDataset(torch.arange(4)), num_workers=available_cpu_count() + 3)
        assert [w for w in caught if "This DataLoader will create" in str(w.message)]
        caught.clear()

        configure_system_libraries()
        loader.check_worker_number_rationality()
        warnings.warn("an unrelated warning still shows", UserWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["an unrelated warning still shows"]

        state.restore()
        caught.clear()
        loader.check_worker_number_rationality()
        assert [w for w in caught if "This DataLoader will create" in str(w.message)]


def test_configuring_twice_adds_each_filter_once() -> None:
    configure_system_libraries()
    once = list(warnings.filters)
    configure_system_libraries()
    assert warnings.filters == once


@pytest.mark.usefixtures("without_matplotlib")
def test_without_matplotlib_no_backend_is_chosen_and_nothing_is_imported() -> None:
    configure_system_libraries()
    assert "MPLBACKEND" not in os.environ
    assert sys.modules["matplotlib"] is None
    assert RuntimeState.capture().matplotlib_backend is None


@pytest.mark.usefixtures("fake_matplotlib_installed")
def test_installed_but_unimported_matplotlib_gets_the_env_var_only() -> None:
    configure_system_libraries()
    assert os.environ["MPLBACKEND"] == "Agg"
    assert "matplotlib" not in sys.modules


@pytest.mark.usefixtures("fake_matplotlib_installed")
def test_imported_matplotlib_is_switched_to_agg_and_switched_back_on_restore() -> None:
    matplotlib: ModuleType = importlib.import_module("matplotlib")
    before = RuntimeState.capture()
    assert before.matplotlib_backend == "TkAgg"

    _, undo = undoable(configure_system_libraries, before)
    assert matplotlib.get_backend() == "Agg"
    assert os.environ["MPLBACKEND"] == "Agg"

    undo()
    assert matplotlib.get_backend() == "TkAgg"
    assert matplotlib.calls == ["Agg", "TkAgg"]
    assert "MPLBACKEND" not in os.environ
    assert RuntimeState.capture() == before
