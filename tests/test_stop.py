"""A stop the user's code cannot lose: a SIGTERM/SIGINT/SIGHUP that reaches a live run
is recorded with its signal and `orchestrator-fsm run` exits 128 + signum, even when the
entry catches what the signal raised (pytorch/examples' "Ctrl-C to stop early") or
stops cooperatively at a step boundary after checkpointing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import cli_command, only_run_dir, wait_for, write_recipe

from orchestrator_fsm import read_run
from orchestrator_fsm.errors import RunInterrupted
from orchestrator_fsm.orchestrator import RootOrchestrator

ConfigFactory = Callable[..., Any]

# pytorch/examples' word_language_model: `try: for epoch ...: train() except
# KeyboardInterrupt: print('Exiting from training early')`, then it goes on (tests).
CATCHES_KEYBOARD_INTERRUPT = """
import time

def main(orch):
    try:
        (orch.paths.root / "entered").touch()
        for _ in range(600):
            time.sleep(0.1)
    except KeyboardInterrupt:
        print("Exiting from training early", flush=True)
    (orch.paths.root / "went-on").touch()
"""

CATCHES_EVERYTHING = """
import time

def main(orch):
    try:
        (orch.paths.root / "entered").touch()
        for _ in range(600):
            time.sleep(0.1)
    except BaseException:
        pass
"""

# Swallows the first stop, then trains on as if nothing had happened.
SWALLOWS_THEN_GOES_ON = """
import time

def main(orch):
    try:
        (orch.paths.root / "entered").touch()
        for _ in range(600):
            time.sleep(0.1)
    except KeyboardInterrupt:
        (orch.paths.root / "swallowed").touch()
    for _ in range(600):
        time.sleep(0.1)
"""

# The cooperative form: the loop checks stop_requested at each step boundary, saves a
# checkpoint there and returns; nothing is raised into it.
COOPERATIVE = """
import time
import torch

def main(orch):
    model = torch.nn.Linear(2, 2)
    store = orch.checkpoints()
    try:
        with orch.cooperative_stop():
            (orch.paths.root / "entered").touch()
            for step in range(6000):
                if orch.stop_requested:
                    store.save(step, model=model, extra={"stopped_by": orch.stop_signal.name})
                    return
                time.sleep(0.01)
    except KeyboardInterrupt:
        (orch.paths.root / "raised").touch()
        raise
"""

# Cooperative, but the loop never looks: the second signal stops it.
COOPERATIVE_NEVER_LOOKS = """
import time

def main(orch):
    with orch.cooperative_stop():
        (orch.paths.root / "entered").touch()
        for _ in range(600):
            if orch.stop_requested:
                (orch.paths.root / "requested").touch()
            time.sleep(0.1)
"""


def start(tmp_path: Path, code: str) -> subprocess.Popen[str]:
    """``orchestrator-fsm run`` of ``code``'s ``main`` on a minimal recipe in ``tmp_path``."""
    (tmp_path / "train.py").write_text(textwrap.dedent(code), encoding="utf-8")
    recipe = write_recipe(tmp_path)
    return subprocess.Popen(
        cli_command("run", str(recipe), "--entry", "train.py:main"),
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "250", "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        stdin=subprocess.DEVNULL,  # no terminal: a SIGINT is not Ctrl-C at one
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def reached(tmp_path: Path, proc: subprocess.Popen[str], marker: str) -> Path:
    """The run directory once the entry has written ``marker`` in it."""
    (hit,) = wait_for(lambda: list((tmp_path / "outputs").glob(f"*/{marker}")), proc)
    return hit.parent


def finish(proc: subprocess.Popen[str], timeout_s: float = 60) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def assert_ended_by(root: Path, signum: signal.Signals) -> None:
    record = read_run(root)
    assert (record.status, record.state) == ("interrupted", "cleaned")
    assert record.interruption is not None and record.interruption.signal == signum.name
    assert record.error is not None
    assert (record.error.type, record.error.message) == ("RunInterrupted", signum.name)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("code", "signum"),
    [
        (CATCHES_KEYBOARD_INTERRUPT, signal.SIGTERM),
        (CATCHES_EVERYTHING, signal.SIGTERM),
        (CATCHES_KEYBOARD_INTERRUPT, signal.SIGINT),
        (CATCHES_EVERYTHING, signal.SIGHUP),
    ],
    ids=["except-KeyboardInterrupt-SIGTERM", "except-BaseException-SIGTERM", "SIGINT", "SIGHUP"],
)
def test_a_stop_the_entry_swallows_is_recorded_and_sets_the_exit_code(
    tmp_path: Path, code: str, signum: signal.Signals
) -> None:
    proc = start(tmp_path, code)
    root = reached(tmp_path, proc, "entered")
    proc.send_signal(signum)
    out, err = finish(proc)
    assert proc.returncode == 128 + signum, (out, err)
    if code is CATCHES_KEYBOARD_INTERRUPT:
        assert "Exiting from training early" in out  # the entry's own handler ran
        assert (root / "went-on").exists()
    assert "status: interrupted" in out
    assert f"interrupted ({signum.name})" in err
    assert_ended_by(root, signum)
    log = (root / "logs").rglob("*.log")
    assert any(f"{signum.name} reached the run and its code returned" in p.read_text() for p in log)


@pytest.mark.slow
def test_a_second_signal_stops_an_entry_that_swallowed_the_first(tmp_path: Path) -> None:
    proc = start(tmp_path, SWALLOWS_THEN_GOES_ON)
    reached(tmp_path, proc, "entered")
    proc.send_signal(signal.SIGTERM)
    root = reached(tmp_path, proc, "swallowed")
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc)
    # The entry would go on for a minute: the second signal raised into it.
    assert time.monotonic() - sent < 30, "the second SIGTERM did not stop the entry"
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert_ended_by(root, signal.SIGTERM)


@pytest.mark.slow
def test_a_cooperative_loop_checkpoints_and_returns_and_the_signal_is_recorded(
    tmp_path: Path,
) -> None:
    proc = start(tmp_path, COOPERATIVE)
    root = reached(tmp_path, proc, "entered")
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert not (root / "raised").exists()  # nothing was raised into the loop
    assert_ended_by(root, signal.SIGTERM)
    (checkpoint,) = (root / "checkpoints").glob("*.pt")
    saved = torch.load(checkpoint, weights_only=False)  # readable without the package
    assert saved["extra"] == {"stopped_by": "SIGTERM"}
    assert "model" in saved["state"]


@pytest.mark.slow
def test_a_second_signal_raises_in_a_cooperative_loop_that_never_looks(tmp_path: Path) -> None:
    proc = start(tmp_path, COOPERATIVE_NEVER_LOOKS)
    reached(tmp_path, proc, "entered")
    proc.send_signal(signal.SIGTERM)
    root = reached(tmp_path, proc, "requested")  # the flag, and no exception
    proc.send_signal(signal.SIGINT)
    out, err = finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)  # the first stop counts
    assert_ended_by(root, signal.SIGTERM)


def test_library_use_records_a_swallowed_stop_and_says_which(make_config: ConfigFactory) -> None:
    orch = RootOrchestrator(make_config())
    with orch:
        assert not orch.stop_requested and orch.stop_signal is None
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except KeyboardInterrupt:
            pass  # the user's own "stop early"
        assert orch.stop_requested and orch.stop_signal is signal.SIGTERM
    assert orch.paths is not None
    assert_ended_by(orch.paths.root, signal.SIGTERM)


def test_library_use_records_a_stop_followed_by_another_error(make_config: ConfigFactory) -> None:
    orch = RootOrchestrator(make_config())
    with pytest.raises(FileNotFoundError), orch:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        except KeyboardInterrupt:
            pass
        raise FileNotFoundError("ckpt.pt")  # what the entry did next
    assert orch.paths is not None
    assert_ended_by(orch.paths.root, signal.SIGTERM)


def test_in_library_use_the_cooperative_stop_raises_nothing(make_config: ConfigFactory) -> None:
    orch = RootOrchestrator(make_config())
    with orch, orch.cooperative_stop():
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not orch.stop_requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert orch.stop_signal is signal.SIGTERM
    assert orch.paths is not None
    assert_ended_by(orch.paths.root, signal.SIGTERM)


def test_without_a_signal_the_run_completes_as_before(make_config: ConfigFactory) -> None:
    orch = RootOrchestrator(make_config())
    with orch, orch.cooperative_stop():
        pass
    assert orch.paths is not None and not orch.stop_requested
    assert read_run(orch.paths.root).status == "completed"


def test_outside_the_cooperative_block_the_signal_raises(make_config: ConfigFactory) -> None:
    orch = RootOrchestrator(make_config())
    with pytest.raises(RunInterrupted), orch:
        with orch.cooperative_stop():
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    assert orch.paths is not None
    assert_ended_by(orch.paths.root, signal.SIGTERM)


@pytest.mark.slow
def test_the_readmes_cooperative_loop_runs_as_written(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (block,) = [
        textwrap.dedent(b)
        for b in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
        if "orch.cooperative_stop()" in b
    ]
    prelude = """
        import time
        from pathlib import Path
        import torch

        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        steps = 100_000

        def train_step(model, optimizer):
            Path("entered").touch()
            time.sleep(0.01)
    """
    proc = start(tmp_path, textwrap.dedent(prelude) + block)
    wait_for(lambda: list(tmp_path.glob("entered")), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc)
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    root = only_run_dir(tmp_path / "outputs")
    assert_ended_by(root, signal.SIGTERM)
    assert list((root / "checkpoints").glob("*.pt"))
