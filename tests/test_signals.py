"""Termination signals end a live run as an interrupt, in library use too."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import minimal_recipe
from fakes import Calls, fake_dependencies

from orchestrator_fsm import read_run
from orchestrator_fsm.errors import RunInterrupted
from orchestrator_fsm.orchestrator import RootOrchestrator

ConfigFactory = Callable[..., Any]

LIBRARY_RUN = textwrap.dedent(
    """
    import json, signal, sys, time
    from pathlib import Path
    from orchestrator_fsm import Config, RootOrchestrator
    from orchestrator_fsm.lifecycle.signals import RunInterrupted

    cfg = Config.from_dict(json.loads(sys.argv[1]))
    try:
        with RootOrchestrator(cfg) as orch:
            (orch.paths.root / "entered").write_text("yes")
            time.sleep(60)
    except RunInterrupted as exc:
        restored = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        print(exc.signum, restored)
        sys.exit(3)
    """
)


def test_sigterm_in_library_use_unwinds_and_is_recorded(tmp_path: Path) -> None:
    recipe = json.dumps(minimal_recipe(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", LIBRARY_RUN, recipe],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not list((tmp_path / "outputs").glob("*/entered")):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached its with-block"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    assert out.split() == [str(int(signal.SIGTERM)), "True"]
    (root,) = (tmp_path / "outputs").iterdir()
    record = read_run(root)
    assert (record.status, record.state) == ("interrupted", "cleaned")
    assert record.error is not None
    assert (record.error.type, record.error.message) == ("RunInterrupted", "SIGTERM")


def signalled_while_releasing(
    calls: Calls, signum: signal.Signals = signal.SIGTERM
) -> dict[str, Any]:
    """Fake dependencies whose lock release gets ``signum``, then finishes its work."""
    deps = fake_dependencies(calls)
    infra = deps["infra_manager"]
    release = infra.release_resources

    def release_then_get_signalled(cfg: Any, logger: Any = None) -> None:
        os.kill(os.getpid(), signum)  # delivered while cleanup runs
        release(cfg, logger=logger)

    infra.release_resources = release_then_get_signalled
    return deps


def test_a_signal_during_cleanup_is_held_until_the_record_is_final(
    make_config: ConfigFactory,
) -> None:
    calls = Calls()
    deps = signalled_while_releasing(calls)
    orch = RootOrchestrator(make_config(), rank=0, local_rank=0, **deps)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted) as caught, orch:
        pass
    assert caught.value.signum == signal.SIGTERM
    assert "release_resources" in calls.names()  # the undo finished after the signal
    assert orch.paths is not None
    record = read_run(orch.paths.root)
    assert (record.status, record.state) == ("interrupted", "cleaned")
    assert record.error is not None and record.error.step == "cleanup"
    assert signal.getsignal(signal.SIGTERM) is previous


def test_an_enclosing_guard_does_not_cut_the_hold_during_cleanup_short(
    make_config: ConfigFactory,
) -> None:
    from orchestrator_fsm.lifecycle.signals import SignalGuard

    calls = Calls()
    deps = signalled_while_releasing(calls)
    outer = SignalGuard(signals=(signal.SIGTERM,))  # what the CLI installs around a run
    outer.install()
    try:
        outer_handler = signal.getsignal(signal.SIGTERM)
        orch = RootOrchestrator(make_config(), rank=0, local_rank=0, **deps)
        with pytest.raises(RunInterrupted), orch:
            pass
        assert "release_resources" in calls.names()  # the undo ran to its end
        assert signal.getsignal(signal.SIGTERM) == outer_handler
    finally:
        outer.restore()
    assert orch.paths is not None
    assert read_run(orch.paths.root).status == "interrupted"


def test_a_sigusr1_during_cleanup_is_logged_and_its_callback_not_called(
    make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls = Calls()
    deps = signalled_while_releasing(calls, signal.SIGUSR1)
    checkpoints: list[int] = []
    orch = RootOrchestrator(
        make_config(),
        rank=0,
        local_rank=0,
        signal_callbacks={"SIGUSR1": lambda orch, signum: checkpoints.append(signum)},
        **deps,
    )
    previous = signal.getsignal(signal.SIGUSR1)
    with caplog.at_level(logging.INFO, logger="orchestrator_fsm"), orch:
        pass
    assert checkpoints == []
    assert "received SIGUSR1 while cleaning up; not calling" in caplog.text
    assert "release_resources" in calls.names()
    assert orch.paths is not None
    assert read_run(orch.paths.root).status == "completed"
    assert signal.getsignal(signal.SIGUSR1) is previous
