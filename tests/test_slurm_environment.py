"""What runs under SLURM needs without a cluster: MASTER_ADDR/MASTER_PORT from the node
list, the array task in the lock identity, and SIGUSR1 held while the command starts
(tests/slurm/ runs the same under a real SLURM)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cli_command, only_run_dir, write_recipe

from orchestrator_fsm.distributed import slurm_master_endpoint
from orchestrator_fsm.lifecycle.signals import hold_startup_signals, take_held_signals
from orchestrator_fsm.phases.lock import resolve_lock_path, run_identity


@pytest.mark.parametrize(
    ("nodes", "addr"),
    [
        ("n[1-2]", "n1"),
        ("gpu[05-09],cpu[1-3]", "gpu05"),
        ("node[3,5]", "node3"),
        ("a,b", "a"),
        ("h1 h2", "h1"),
        ("single", "single"),
    ],
)
def test_master_address_is_the_first_host_of_the_node_list(nodes: str, addr: str) -> None:
    env = {"SLURM_NODELIST": nodes, "SLURM_JOB_ID": "1234567"}
    assert slurm_master_endpoint(env) == (addr, "19567")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == (addr, "19567")


def test_master_endpoint_keeps_what_is_set_and_leaves_non_slurm_alone() -> None:
    env = {"SLURM_JOB_NODELIST": "n1", "MASTER_ADDR": "head", "SLURM_JOB_ID": "7"}
    assert slurm_master_endpoint(env) == ("head", "15007")
    assert slurm_master_endpoint({"SLURM_NODELIST": "n1"}) == ("n1", "12910")
    plain: dict[str, str] = {}
    assert slurm_master_endpoint(plain) is None
    assert plain == {}


def test_array_tasks_of_one_config_have_their_own_lock(
    make_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(infrastructure={"lock": {}})
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    plain = run_identity(cfg)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    task0, lock0 = run_identity(cfg), resolve_lock_path(cfg)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert len({plain, task0, run_identity(cfg)}) == 3
    assert resolve_lock_path(cfg) != lock0


def test_held_signals_are_kept_once_each_in_order_and_never_fatal() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    try:
        hold_startup_signals()
        for signum in (signal.SIGUSR2, signal.SIGUSR1, signal.SIGUSR2):
            os.kill(os.getpid(), signum)
        assert take_held_signals() == (signal.SIGUSR2, signal.SIGUSR1)
        assert take_held_signals() == ()
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


ENTRY = """
import time
def save(orch, signum):
    (orch.paths.root / f"saved-{signum}").write_text("x")
def main(orch):
    time.sleep(0.5)
"""


@pytest.mark.slow
def test_a_usr1_while_the_command_imports_reaches_the_callback(tmp_path: Path) -> None:
    """Sent while the process is starting (before torch and the entry are imported): the
    run still happens and the callback gets it once the run is live."""
    (tmp_path / "ckpt.py").write_text(ENTRY, encoding="utf-8")
    recipe = write_recipe(
        tmp_path, infrastructure={"signal_callbacks": {"SIGUSR1": f"{tmp_path}/ckpt.py:save"}}
    )
    proc = subprocess.Popen(
        cli_command("run", str(recipe), "--entry", f"{tmp_path}/ckpt.py:main"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Past the interpreter's own start-up (the command's first line), before any import
    # of torch: the process has been running for a moment only.
    time.sleep(0.3)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{out}\n{err}"
    run_dir = only_run_dir(tmp_path / "outputs")
    assert (run_dir / f"saved-{int(signal.SIGUSR1)}").exists()
    assert (
        "received SIGUSR1 while the run was starting" in (run_dir / "logs" / "run.log").read_text()
    )
