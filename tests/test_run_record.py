"""The run record: one writer, a status derived from the machine, read back as RunRecord."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from fakes import Calls, StepFailure, fake_dependencies

from orchestrator_fsm import RunRecord, infer_status, read_run
from orchestrator_fsm.errors import InfrastructureError
from orchestrator_fsm.layout import RUN_FILE
from orchestrator_fsm.lifecycle.table import LifecycleState
from orchestrator_fsm.orchestrator import RootOrchestrator

ConfigFactory = Callable[..., Any]


def build(make_config: ConfigFactory, calls: Calls, **overrides: Any) -> RootOrchestrator:
    deps = fake_dependencies(calls)
    deps.update(overrides)
    return RootOrchestrator(make_config(), rank=0, local_rank=0, **deps)


def test_read_run_gives_the_record_with_every_transition_of_the_machine(
    make_config: ConfigFactory,
) -> None:
    orch = build(make_config, Calls())
    with orch:
        orch.log_environment_report()
    assert orch.paths is not None
    record = read_run(orch.paths.root)
    assert isinstance(record, RunRecord)
    assert (record.status, record.state, record.error) == ("completed", "cleaned", None)
    assert record.run_id == orch.paths.run_id and record.root == orch.paths.root
    assert record.pid == os.getpid() and record.host == socket.gethostname()
    assert record.device == "cpu"
    assert [(t.source, t.dest, t.step) for t in record.transitions] == [
        (t.source, t.dest, t.step) for t in orch.machine.history
    ]
    assert record.started_at == orch.machine.history[0].started_at
    assert record.duration_s is not None and record.duration_s >= 0
    with pytest.raises(AttributeError):
        record.status = "failed"  # type: ignore[misc]


def test_an_interrupt_while_releasing_the_lock_is_recorded_as_interrupted(
    make_config: ConfigFactory,
) -> None:
    calls = Calls()
    orch = build(make_config, calls)
    orch.__enter__()
    calls.fail["release_resources"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        orch.__exit__(None, None, None)
    assert orch.state is LifecycleState.CLEANED
    assert orch.paths is not None
    record = read_run(orch.paths.root)
    assert record.status == "interrupted"
    assert record.error is not None
    assert (record.error.type, record.error.step) == ("KeyboardInterrupt", "cleanup")


def test_the_error_of_the_step_that_failed_is_the_outcome_not_a_later_one(
    make_config: ConfigFactory,
) -> None:
    calls = Calls()
    calls.fail["dump_git_info"] = StepFailure("no git")
    calls.fail["release_resources"] = OSError("never reached: the lock was not taken")
    orch = build(make_config, calls)
    with pytest.raises(StepFailure):
        orch.__enter__()
    assert orch.paths is not None
    record = read_run(orch.paths.root)
    assert record.status == "failed"
    assert record.error is not None
    assert (record.error.step, record.error.type) == ("persist_manifest", "StepFailure")


def test_the_record_is_finished_exactly_once(make_config: ConfigFactory) -> None:
    orch = build(make_config, Calls())
    with orch:
        pass
    assert orch.paths is not None
    first = (orch.paths.root / RUN_FILE).read_text()
    orch.cleanup()  # a no-op once terminal: the record must not change
    with pytest.raises(Exception, match="re-initialize"):
        orch.initialize_core_services()
    assert (orch.paths.root / RUN_FILE).read_text() == first


def test_transitions_before_the_run_directory_are_back_filled_once(
    make_config: ConfigFactory,
) -> None:
    orch = build(make_config, Calls())
    with orch:
        pass
    assert orch.paths is not None
    lines = (orch.paths.root / "lifecycle.jsonl").read_text().splitlines()
    assert len(lines) == len(orch.machine.history)
    assert [json.loads(line)["step"] for line in lines[:3]] == [
        "seed",
        "configure_runtime",
        "provision",
    ]


def test_a_running_record_whose_process_is_gone_is_crashed(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                           capture_output=True, text=True)  # fmt: skip
    gone_pid = int(child.stdout)
    base = {"run_id": "r", "status": "running", "host": socket.gethostname()}
    gone = RunRecord.from_json({**base, "pid": gone_pid}, tmp_path)
    alive = RunRecord.from_json({**base, "pid": os.getpid()}, tmp_path)
    elsewhere = RunRecord.from_json({**base, "pid": gone_pid, "host": "not-this-host"}, tmp_path)
    assert infer_status(gone) == gone.effective_status == "crashed"
    assert infer_status(alive) == "running"
    assert infer_status(elsewhere) == "running"


def test_read_run_names_the_file_when_it_is_not_a_json_object(tmp_path: Path) -> None:
    (tmp_path / RUN_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"run\.json holds a JSON list"):
        read_run(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_run(tmp_path / "missing")


def test_secrets_on_the_command_line_and_in_names_never_reach_the_record(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator_fsm.cli import main

    monkeypatch.setattr(
        sys, "argv", ["orchestrator-fsm", "run", "--set", "tracking.auth_token=hunter2"]
    )
    cfg = make_config(dataset={"name": "https://me:hunter2@data.example.org/digits"})
    orch = RootOrchestrator(cfg, rank=0, local_rank=0, **fake_dependencies(Calls()))
    with orch:
        pass
    assert orch.paths is not None
    assert "hunter2" not in orch.paths.run_id
    for name in (RUN_FILE, "lifecycle.jsonl"):
        assert "hunter2" not in (orch.paths.root / name).read_text()
    assert read_run(orch.paths.root).argv[-1] == "tracking.auth_token=***"
    assert main(["inspect", str(orch.paths.root), "--json"]) == 0
    assert "hunter2" not in capsys.readouterr().out


def test_a_running_record_whose_pid_now_names_another_process_is_crashed(
    make_config: ConfigFactory,
) -> None:
    orch = build(make_config, Calls())
    with orch:
        assert orch.paths is not None
        live = read_run(orch.paths.root)
        assert live.boot_id is not None and live.process_start_ticks is not None
        assert infer_status(live) == "running"
        reused = attrs.evolve(live, process_start_ticks=live.process_start_ticks - 1)
        rebooted = attrs.evolve(live, boot_id="00000000-0000-0000-0000-000000000000")
        assert infer_status(reused) == "crashed"
        assert infer_status(rebooted) == "crashed"


def _heartbeat_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if "heartbeat" in t.name]


def test_a_live_run_refreshes_its_heartbeat_until_cleanup(make_config: ConfigFactory) -> None:
    import time

    orch = RootOrchestrator(make_config(telemetry={"heartbeat_s": 0.1}), rank=0, local_rank=0)
    with orch:
        assert orch.paths is not None
        first = read_run(orch.paths.root)
        assert first.heartbeat_s == 0.1 and first.heartbeat_at is not None
        assert _heartbeat_threads() == ["orchestrator-fsm-heartbeat"]
        deadline = time.monotonic() + 30
        while read_run(orch.paths.root).heartbeat_at == first.heartbeat_at:
            assert time.monotonic() < deadline, "the heartbeat never refreshed run.json"
            time.sleep(0.05)
        assert read_run(orch.paths.root).status == "running"
    assert _heartbeat_threads() == []
    final = read_run(orch.paths.root)
    assert final.status == "completed"
    time.sleep(0.3)  # a stopped heartbeat never rewrites the final record
    assert read_run(orch.paths.root) == final


def test_a_zero_heartbeat_starts_no_thread(make_config: ConfigFactory) -> None:
    with RootOrchestrator(make_config(telemetry={"heartbeat_s": 0}), rank=0, local_rank=0) as orch:
        assert _heartbeat_threads() == []
        assert orch.record is not None and orch.record.heartbeat_at is None


def test_the_heartbeat_decides_for_a_run_on_another_host(tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    from orchestrator_fsm.lifecycle.record import stale_after

    now = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    bound = stale_after(30.0)
    base = {"run_id": "r", "status": "running", "host": "node-17", "heartbeat_s": 30.0}

    def at(seconds_ago: float) -> RunRecord:
        beat = (now - timedelta(seconds=seconds_ago)).isoformat()
        return RunRecord.from_json({**base, "heartbeat_at": beat}, tmp_path)

    assert infer_status(at(5), now=now) == "running"
    assert infer_status(at(bound - 1), now=now) == "running"
    assert infer_status(at(bound + 1), now=now) == "crashed"
    silent = RunRecord.from_json({**base, "heartbeat_s": None}, tmp_path)
    assert infer_status(silent, now=now) == "running"  # nothing to judge by


def test_a_live_process_on_this_host_is_running_however_old_its_heartbeat(
    make_config: ConfigFactory,
) -> None:
    from datetime import datetime, timezone

    with build(make_config, Calls()) as orch:
        assert orch.paths is not None
        live = read_run(orch.paths.root)
        old = attrs.evolve(
            live, heartbeat_s=1.0, heartbeat_at=datetime(2000, 1, 1, tzinfo=timezone.utc)
        )
        assert infer_status(old) == "running"  # e.g. a suspended job: identity decides


def test_run_status_is_the_true_status_of_a_run_directory(tmp_path: Path) -> None:
    from orchestrator_fsm import run_status

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                           capture_output=True, text=True)  # fmt: skip
    root = tmp_path / "run"
    root.mkdir()
    record = {"run_id": "run", "status": "running", "host": socket.gethostname()}
    (root / RUN_FILE).write_text(json.dumps({**record, "pid": int(child.stdout)}))
    assert run_status(root) == "crashed"
    (root / RUN_FILE).write_text(json.dumps({**record, "status": "completed"}))
    assert run_status(str(root)) == "completed"
    with pytest.raises(FileNotFoundError):
        run_status(tmp_path / "missing")


def test_a_killed_run_is_crashed_by_its_identity(tmp_path: Path) -> None:
    """SIGKILL a real run in the middle of its pipeline: the record says running, the
    reader says crashed."""
    import signal
    import textwrap

    import yaml
    from conftest import minimal_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(minimal_recipe(tmp_path)))
    script = textwrap.dedent(
        f"""
        import os, signal
        from orchestrator_fsm import Config, RootOrchestrator
        with RootOrchestrator(Config.from_recipe({str(recipe)!r})) as orch:
            print(orch.paths.root, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == -signal.SIGKILL
    root = Path(result.stdout.strip())
    assert read_run(root).status == "running"
    assert infer_status(read_run(root)) == "crashed"


def test_the_error_that_ends_a_run_is_in_its_log_with_the_traceback(
    make_config: ConfigFactory,
) -> None:
    def train() -> None:
        raise ValueError("the loss went to nan")

    orch = RootOrchestrator(make_config(), rank=0, local_rank=0)
    with pytest.raises(ValueError), orch:
        train()
    assert orch.paths is not None
    log = (orch.paths.logs / "run.log").read_text(encoding="utf-8")
    assert "the run failed in pipeline: the loss went to nan" in log
    assert "Traceback (most recent call last)" in log
    assert "in train" in log
    error = read_run(orch.paths.root).error
    assert error is not None and error.where is not None and error.where.endswith("in train")


def test_a_failing_steps_traceback_is_in_the_log_before_the_rollback_closes_it(
    make_config: ConfigFactory,
) -> None:
    calls = Calls()
    calls.fail["prepare_environment"] = StepFailure("prepare_environment")
    deps = fake_dependencies(calls)
    del deps["log_initializer"]  # the real run log
    orch = RootOrchestrator(make_config(), rank=0, local_rank=0, **deps)
    with pytest.raises(InfrastructureError), orch:
        pass
    assert orch.paths is not None
    log = (orch.paths.logs / "run.log").read_text(encoding="utf-8")
    assert "step 'acquire_lock' failed" in log
    assert "Traceback (most recent call last)" in log
