"""The run lock, exercised against real processes holding it."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import portalocker
import pytest

import orchestrator_fsm
from orchestrator_fsm.config import Config
from orchestrator_fsm.errors import InfrastructureError, LockContendedError
from orchestrator_fsm.phases.lock import (
    InfrastructureManager,
    read_lock_holder,
    resolve_lock_path,
    run_identity,
)

PACKAGE_DIR = Path(orchestrator_fsm.__file__).resolve().parent
EXCLUSIVE_NO_WAIT = portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING

# A separate Python process that takes the lock through InfrastructureManager, reports
# "ready <pid>" on stdout, and releases when a line arrives on stdin. In "fork" mode it
# forks after locking and exits at once, leaving the child (which inherited the locked
# descriptor) holding the lock until stdin closes.
HOLDER_SCRIPT = """
import logging, os, sys, types
from pathlib import Path

# Import the lock module without running the package's __init__ (which pulls in torch
# and everything else), so that a holder is up in a fraction of a second.
package = types.ModuleType("orchestrator_fsm")
package.__path__ = [sys.argv[4]]
sys.modules["orchestrator_fsm"] = package
from orchestrator_fsm.phases.lock import InfrastructureManager

path, run_id, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
lock = types.SimpleNamespace(enabled=True, timeout_s=0.0, path=path)
cfg = types.SimpleNamespace(
    hardware=types.SimpleNamespace(project_name="holder-project", allow_process_kill=False),
    infrastructure=types.SimpleNamespace(lock=lock),
)
log = logging.getLogger("holder")
manager = InfrastructureManager()
manager.bind_run(run_id)
manager.prepare_environment(cfg, log)
if mode == "fork":
    child = os.fork()
    if child == 0:
        sys.stdin.readline()
        os._exit(0)
    print("ready", child, flush=True)
    os._exit(0)
print("ready", os.getpid(), flush=True)
sys.stdin.readline()
manager.release_resources(cfg, log)
print("released", flush=True)
"""


class Holder:
    """A lock-holding child process and the pid that ends up holding the lock."""

    def __init__(self, proc: subprocess.Popen[str], lock_pid: int) -> None:
        self.proc = proc
        self.lock_pid = lock_pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("release\n")
        self.proc.stdin.flush()


@pytest.fixture
def start_holder() -> Iterator[Callable[..., Holder]]:
    started: list[Holder] = []

    def start(path: Path, run_id: str = "run-held-elsewhere", mode: str = "hold") -> Holder:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER_SCRIPT, str(path), run_id, mode, str(PACKAGE_DIR)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"lock holder did not start: stdout={line!r} stderr={err}")
        holder = Holder(proc, int(line.split()[1]))
        started.append(holder)
        return holder

    yield start
    for holder in started:
        proc = holder.proc
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()  # EOF makes a holder (or its forked child) let go and exit
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def make_cfg(
    lock_path: Path | None,
    *,
    enabled: bool = True,
    timeout_s: float = 0.0,
    project_name: str = "demo-project",
    allow_process_kill: bool = False,
    scope: str = "run",
    seed: int = 1,
    telemetry: dict[str, Any] | None = None,
) -> Config:
    return Config.from_dict(
        {
            "dataset": {"name": "toy"},
            "architecture": {"name": "mlp"},
            "training": {"seed": seed},
            "hardware": {"project_name": project_name, "allow_process_kill": allow_process_kill},
            "telemetry": telemetry or {},
            "infrastructure": {
                "lock": {
                    "enabled": enabled,
                    "timeout_s": timeout_s,
                    "path": None if lock_path is None else str(lock_path),
                    "scope": scope,
                }
            },
        }
    )


def stand_in_cfg(
    lock_path: Path | None, *, timeout_s: float = 0.0, project_name: str, scope: str = "project"
) -> Any:
    """Duck-typed config for values the real Config refuses before the lock sees them."""
    return SimpleNamespace(
        hardware=SimpleNamespace(project_name=project_name, allow_process_kill=False),
        infrastructure=SimpleNamespace(
            lock=SimpleNamespace(enabled=True, timeout_s=timeout_s, path=lock_path, scope=scope)
        ),
    )


@pytest.fixture
def log() -> logging.Logger:
    return logging.getLogger("tests.guarding")


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "locks" / "run.lock"


class FakeTime:
    """A monotonic clock whose sleep advances it, recording every sleep."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_lock_contention_names_the_holder(
    lock_path: Path, log: logging.Logger, start_holder: Callable[..., Holder]
) -> None:
    holder = start_holder(lock_path, run_id="20240501-120000-toy-mlp-abcdef-1234")
    manager = InfrastructureManager()

    with pytest.raises(LockContendedError) as caught:
        manager.prepare_environment(make_cfg(lock_path), log)

    message = str(caught.value)
    assert f"pid {holder.lock_pid}" in message
    assert socket.gethostname() in message
    assert "20240501-120000-toy-mlp-abcdef-1234" in message
    assert str(lock_path) in message
    info = caught.value.holder
    assert info["pid"] == holder.lock_pid
    assert info["host"] == socket.gethostname()
    assert info["run_id"] == "20240501-120000-toy-mlp-abcdef-1234"
    assert info["project"] == "holder-project"
    assert isinstance(info["since"], str)
    assert str(info["since"]) in message
    assert isinstance(caught.value, InfrastructureError)
    assert not manager.held
    assert holder.proc.poll() is None


def test_held_lock_file_records_this_process_as_holder(
    lock_path: Path, log: logging.Logger
) -> None:
    manager = InfrastructureManager()
    manager.bind_run("run-1")
    manager.prepare_environment(make_cfg(lock_path, project_name="proj"), log)
    try:
        assert manager.held
        assert manager.lock_path == lock_path
        info = read_lock_holder(lock_path)
        assert info is not None
        assert info["pid"] == os.getpid()
        assert info["host"] == socket.gethostname()
        assert info["run_id"] == "run-1"
        assert info["project"] == "proj"
        assert str(info["since"]).endswith("+00:00")
    finally:
        manager.release_resources(make_cfg(lock_path), log)


def test_bind_run_while_holding_rewrites_the_holder_info(
    lock_path: Path, log: logging.Logger
) -> None:
    manager = InfrastructureManager()
    manager.prepare_environment(make_cfg(lock_path), log)
    try:
        info = read_lock_holder(lock_path)
        assert info is not None and info["run_id"] is None
        manager.bind_run("bound-later")
        info = read_lock_holder(lock_path)
        assert info is not None and info["run_id"] == "bound-later"
    finally:
        manager.release_resources(make_cfg(lock_path), log)


def test_waiting_lock_is_taken_when_the_holder_releases_mid_wait(
    lock_path: Path, start_holder: Callable[..., Holder]
) -> None:
    holder = start_holder(lock_path)
    waiter_log = logging.getLogger("tests.guarding.waiter")
    wait_messages: list[str] = []

    class ReleaseHolderOnceWaiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("waiting") and not wait_messages:
                wait_messages.append(message)
                holder.release()

    handler = ReleaseHolderOnceWaiting(level=logging.INFO)
    waiter_log.addHandler(handler)
    waiter_log.setLevel(logging.INFO)
    manager = InfrastructureManager()
    try:
        manager.prepare_environment(make_cfg(lock_path, timeout_s=60.0), waiter_log)
    finally:
        waiter_log.removeHandler(handler)
    try:
        assert manager.held
        assert len(wait_messages) == 1
        assert f"pid {holder.lock_pid}" in wait_messages[0]
        assert holder.proc.wait(timeout=10) == 0
        assert holder.proc.stdout is not None
        assert holder.proc.stdout.read().strip() == "released"
        info = read_lock_holder(lock_path)
        assert info is not None and info["pid"] == os.getpid()
    finally:
        manager.release_resources(make_cfg(lock_path), waiter_log)


def test_timeout_waits_with_capped_exponential_backoff_then_names_the_holder(
    lock_path: Path, log: logging.Logger
) -> None:
    first = InfrastructureManager()
    first.bind_run("first-run")
    first.prepare_environment(make_cfg(lock_path), log)
    fake = FakeTime()
    second = InfrastructureManager(clock=fake.clock, sleep=fake.sleep)
    try:
        with pytest.raises(LockContendedError) as caught:
            second.prepare_environment(make_cfg(lock_path, timeout_s=2.0), log)
    finally:
        first.release_resources(make_cfg(lock_path), log)

    assert fake.sleeps == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.5, 0.37])
    assert "waited 2s" in str(caught.value)
    assert "first-run" in str(caught.value)
    assert caught.value.holder["pid"] == os.getpid()
    assert "this process" in str(caught.value)
    assert not second.held


def test_waiting_is_announced_once_as_a_warning_naming_the_holders_run(
    lock_path: Path, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    first = InfrastructureManager()
    first.bind_run("20260101-000000-toy-mlp-abcdef-0001")
    first.prepare_environment(make_cfg(lock_path), log)
    fake = FakeTime()
    second = InfrastructureManager(clock=fake.clock, sleep=fake.sleep)
    try:
        with caplog.at_level(logging.INFO, logger=log.name), pytest.raises(LockContendedError):
            second.prepare_environment(make_cfg(lock_path, timeout_s=2.0), log)
    finally:
        first.release_resources(make_cfg(lock_path), log)
    waiting = [r for r in caplog.records if r.getMessage().startswith("waiting")]
    assert len(waiting) == 1 and waiting[0].levelno == logging.WARNING
    holder_since = waiting[0].getMessage().split(" since ")[1].split(" ")[0]
    assert waiting[0].getMessage() == (
        f"waiting for run 20260101-000000-toy-mlp-abcdef-0001 (pid {os.getpid()} on host "
        f"{socket.gethostname()}) since {holder_since} to release the run lock {lock_path}; "
        "waiting up to 2s"
    )
    assert datetime.fromisoformat(holder_since).tzinfo is not None


def test_zero_timeout_fails_at_once_without_sleeping(lock_path: Path, log: logging.Logger) -> None:
    first = InfrastructureManager()
    first.prepare_environment(make_cfg(lock_path), log)
    fake = FakeTime()
    try:
        with pytest.raises(LockContendedError, match="timeout_s is 0"):
            InfrastructureManager(clock=fake.clock, sleep=fake.sleep).prepare_environment(
                make_cfg(lock_path, timeout_s=0.0), log
            )
    finally:
        first.release_resources(make_cfg(lock_path), log)
    assert fake.sleeps == []


def test_holder_killed_with_sigkill_frees_the_lock_at_once(
    lock_path: Path, log: logging.Logger, start_holder: Callable[..., Holder]
) -> None:
    holder = start_holder(lock_path)
    with pytest.raises(LockContendedError):
        InfrastructureManager().prepare_environment(make_cfg(lock_path), log)

    os.kill(holder.proc.pid, signal.SIGKILL)
    assert holder.proc.wait(timeout=10) == -signal.SIGKILL

    manager = InfrastructureManager()
    manager.prepare_environment(make_cfg(lock_path, timeout_s=0.0), log)
    try:
        assert manager.held
        info = read_lock_holder(lock_path)
        assert info is not None and info["pid"] == os.getpid()
    finally:
        manager.release_resources(make_cfg(lock_path), log)


def test_contention_notes_a_dead_holder_whose_forked_child_keeps_the_lock(
    lock_path: Path, log: logging.Logger, start_holder: Callable[..., Holder]
) -> None:
    holder = start_holder(lock_path, mode="fork")
    assert holder.proc.wait(timeout=10) == 0  # the process that took the lock is gone

    with pytest.raises(LockContendedError) as caught:
        InfrastructureManager().prepare_environment(make_cfg(lock_path), log)

    parent_pid = holder.proc.pid
    assert caught.value.holder["pid"] == parent_pid
    assert f"pid {parent_pid} is no longer running" in str(caught.value)
    assert holder.lock_pid != parent_pid


def test_release_keeps_the_lock_file_and_lets_the_next_run_in(
    lock_path: Path, log: logging.Logger
) -> None:
    manager = InfrastructureManager()
    manager.prepare_environment(make_cfg(lock_path), log)
    manager.release_resources(make_cfg(lock_path), log)

    assert lock_path.is_file()
    assert lock_path.read_bytes() == b""
    assert read_lock_holder(lock_path) is None
    assert not manager.held
    assert manager.lock_path == lock_path

    successor = InfrastructureManager()
    successor.prepare_environment(make_cfg(lock_path), log)
    assert successor.held
    successor.release_resources(make_cfg(lock_path), log)


def test_lock_file_keeps_its_inode_across_holders(lock_path: Path, log: logging.Logger) -> None:
    manager = InfrastructureManager()
    manager.prepare_environment(make_cfg(lock_path), log)
    inode = lock_path.stat().st_ino
    manager.bind_run("rewritten")
    assert lock_path.stat().st_ino == inode
    manager.release_resources(make_cfg(lock_path), log)
    assert lock_path.stat().st_ino == inode


def test_second_release_is_a_no_op(
    lock_path: Path, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    manager = InfrastructureManager()
    manager.prepare_environment(make_cfg(lock_path), log)
    manager.release_resources(make_cfg(lock_path), log)
    successor = InfrastructureManager()
    successor.prepare_environment(make_cfg(lock_path), log)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=log.name):
        manager.release_resources(make_cfg(lock_path), log)
    try:
        assert caplog.records == []
        assert successor.held
        info = read_lock_holder(lock_path)
        assert info is not None and info["pid"] == os.getpid()
        with pytest.raises(LockContendedError):
            InfrastructureManager().prepare_environment(make_cfg(lock_path), log)
    finally:
        successor.release_resources(make_cfg(lock_path), log)


def test_release_without_a_lock_does_nothing(lock_path: Path, log: logging.Logger) -> None:
    manager = InfrastructureManager()
    manager.release_resources(make_cfg(lock_path), log)
    assert not manager.held
    assert not lock_path.exists()


def test_prepare_twice_keeps_the_one_lock(lock_path: Path, log: logging.Logger) -> None:
    manager = InfrastructureManager()
    manager.prepare_environment(make_cfg(lock_path), log)
    manager.prepare_environment(make_cfg(lock_path), log)
    assert manager.held
    manager.release_resources(make_cfg(lock_path), log)
    assert not manager.held
    other = InfrastructureManager()
    other.prepare_environment(make_cfg(lock_path), log)
    other.release_resources(make_cfg(lock_path), log)


def test_disabled_lock_takes_nothing_and_says_so(
    lock_path: Path, log: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    manager = InfrastructureManager()
    with caplog.at_level(logging.INFO, logger=log.name):
        manager.prepare_environment(make_cfg(lock_path, enabled=False), log)

    assert not manager.held
    assert manager.lock_path is None
    assert not lock_path.exists()
    assert any("run lock disabled" in r.getMessage() for r in caplog.records)
    manager.release_resources(make_cfg(lock_path, enabled=False), log)


def test_disabled_lock_ignores_a_lock_held_by_another_process(
    lock_path: Path, log: logging.Logger, start_holder: Callable[..., Holder]
) -> None:
    start_holder(lock_path)
    manager = InfrastructureManager()
    manager.prepare_environment(make_cfg(lock_path, enabled=False), log)
    assert not manager.held


def test_allow_process_kill_is_ignored_with_a_notice_and_the_holder_survives(
    lock_path: Path,
    log: logging.Logger,
    caplog: pytest.LogCaptureFixture,
    start_holder: Callable[..., Holder],
) -> None:
    holder = start_holder(lock_path)
    with (
        caplog.at_level(logging.INFO, logger=log.name),
        pytest.raises(LockContendedError),
    ):
        InfrastructureManager().prepare_environment(
            make_cfg(lock_path, allow_process_kill=True), log
        )

    notices = [r.getMessage() for r in caplog.records if "allow_process_kill" in r.getMessage()]
    assert len(notices) == 1
    assert "never kills" in notices[0]
    assert "\n" not in notices[0]
    assert holder.proc.poll() is None
    holder.release()
    assert holder.proc.wait(timeout=10) == 0


def test_unreadable_holder_info_reports_holder_unknown(
    lock_path: Path, log: logging.Logger
) -> None:
    lock_path.parent.mkdir(parents=True)
    lock_path.write_bytes(b'{"pid": 12')  # a holder cut off mid-write
    with open(lock_path, "rb") as foreign:
        portalocker.lock(
            foreign, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
        )
        with pytest.raises(LockContendedError, match="holder unknown") as caught:
            InfrastructureManager().prepare_environment(make_cfg(lock_path), log)
    assert caught.value.holder == {}
    assert str(lock_path) in str(caught.value)


def test_empty_lock_file_of_a_holder_reports_holder_unknown(
    lock_path: Path, log: logging.Logger
) -> None:
    lock_path.parent.mkdir(parents=True)
    lock_path.touch()
    with open(lock_path, "rb") as foreign:
        portalocker.lock(
            foreign, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
        )
        with pytest.raises(LockContendedError, match=r"holder unknown: the lock file is empty"):
            InfrastructureManager().prepare_environment(make_cfg(lock_path), log)


def test_uncreatable_lock_directory_raises_infrastructure_error_naming_the_path(
    tmp_path: Path, log: logging.Logger
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the lock directory should be")
    path = blocker / "locks" / "run.lock"

    with pytest.raises(InfrastructureError) as caught:
        InfrastructureManager().prepare_environment(make_cfg(path), log)

    assert not isinstance(caught.value, LockContendedError)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


def test_negative_timeout_is_rejected_naming_the_field(
    lock_path: Path, log: logging.Logger
) -> None:
    cfg = stand_in_cfg(lock_path, timeout_s=-1.0, project_name="demo")
    with pytest.raises(InfrastructureError, match=r"infrastructure\.lock\.timeout_s"):
        InfrastructureManager().prepare_environment(cfg, log)
    assert not lock_path.exists()


def test_lock_file_replaced_while_waiting_is_reopened(lock_path: Path, log: logging.Logger) -> None:
    holder = InfrastructureManager()
    holder.prepare_environment(make_cfg(lock_path), log)
    fake = FakeTime()

    def replace_file_then_sleep(seconds: float) -> None:
        # The holder lets go of the old file and someone puts a new one at the path:
        # the waiter's descriptor now points at a file nobody else will ever open.
        holder.release_resources(make_cfg(lock_path), log)
        lock_path.unlink()
        lock_path.write_bytes(b"")
        fake.sleep(seconds)

    waiter = InfrastructureManager(clock=fake.clock, sleep=replace_file_then_sleep)
    waiter.prepare_environment(make_cfg(lock_path, timeout_s=5.0), log)
    try:
        assert waiter.held
        info = read_lock_holder(lock_path)
        assert info is not None and info["pid"] == os.getpid()
        with pytest.raises(LockContendedError):
            InfrastructureManager().prepare_environment(make_cfg(lock_path), log)
    finally:
        waiter.release_resources(make_cfg(lock_path), log)


def test_project_scope_lock_path_is_in_the_user_cache_named_after_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log: logging.Logger
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = make_cfg(None, project_name="vision-team", scope="project")
    expected = tmp_path / "cache" / "orchestrator-fsm" / "locks" / "vision-team.lock"

    assert resolve_lock_path(cfg) == expected
    manager = InfrastructureManager()
    manager.prepare_environment(cfg, log)
    try:
        assert manager.lock_path == expected
        assert expected.is_file()
    finally:
        manager.release_resources(cfg, log)


def test_default_lock_name_is_reduced_to_a_safe_file_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = stand_in_cfg(None, project_name="My Project/../v2")
    expected = tmp_path / "cache" / "orchestrator-fsm" / "locks" / "my-project-v2.lock"
    assert resolve_lock_path(cfg) == expected


def test_configured_lock_path_is_used_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "custom.lock"
    assert resolve_lock_path(make_cfg(path)) == path
    assert resolve_lock_path(make_cfg(path, scope="project", seed=9)) == path


def test_default_lock_guards_one_run_of_the_project_in_the_user_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = make_cfg(None, project_name="vision-team")
    path = resolve_lock_path(cfg)
    assert path.parent == tmp_path / "cache" / "orchestrator-fsm" / "locks"
    assert path.name == f"vision-team.run-{run_identity(cfg)[:16]}.lock"


def test_run_lock_of_another_seed_recipe_or_output_dir_is_another_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    base = resolve_lock_path(make_cfg(None))
    assert resolve_lock_path(make_cfg(None, seed=2)) != base
    other_recipe = Config.from_dict(
        {**make_cfg(None).dump_serialized(), "architecture": {"name": "cnn"}}
    )
    assert resolve_lock_path(other_recipe) != base
    elsewhere = make_cfg(None, telemetry={"output_dir": str(tmp_path / "elsewhere")})
    assert resolve_lock_path(elsewhere) != base


def test_run_lock_of_the_same_run_ignores_how_it_is_observed_and_guarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    base = resolve_lock_path(make_cfg(None))
    relaunch = make_cfg(
        None,
        timeout_s=30.0,
        # The same output directory, spelt absolutely, and another log level.
        telemetry={"output_dir": str(tmp_path / "outputs"), "log_level": "DEBUG"},
    )
    assert resolve_lock_path(relaunch) == base


def test_unknown_lock_scope_is_rejected_naming_the_field() -> None:
    from orchestrator_fsm.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_cfg(None, scope="user")
    assert ("infrastructure.lock.scope", "expected one of run, project, got 'user'") in [
        (path, message) for path, message in caught.value.problems
    ]


def test_read_lock_holder_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert read_lock_holder(tmp_path / "absent.lock") is None


class _InterruptOn(logging.Handler):
    """Raises KeyboardInterrupt when a record's message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            raise KeyboardInterrupt


def test_an_interrupt_right_after_the_lock_is_taken_does_not_leak_it(
    make_config: Callable[..., Any],
) -> None:
    from fakes import Calls, fake_dependencies

    from orchestrator_fsm.lifecycle.table import LifecycleState
    from orchestrator_fsm.orchestrator import RootOrchestrator

    cfg = make_config()
    interrupting = logging.getLogger("interrupts_after_locking")
    handler = _InterruptOn("acquired run lock")
    interrupting.addHandler(handler)
    interrupting.setLevel(logging.INFO)
    deps = fake_dependencies(Calls())
    manager = InfrastructureManager()
    deps.update(infra_manager=manager, log_initializer=lambda **_: interrupting)
    orch = RootOrchestrator(cfg, rank=0, local_rank=0, **deps)
    with pytest.raises(KeyboardInterrupt):
        orch.__enter__()
    assert orch.state is LifecycleState.FAILED
    assert not manager.held
    # The same process can take the lock again at once: nothing holds it.
    again = InfrastructureManager()
    again.prepare_environment(cfg)
    assert again.held
    again.release_resources(cfg)
    assert handler not in interrupting.handlers
