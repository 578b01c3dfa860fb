"""RootOrchestrator's reference behaviours, driven with in-memory fakes."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import FAKE_ENV_VAR, Calls, StepFailure, fake_dependencies, process_fingerprint

from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS
from orchestrator_fsm.errors import (
    DeviceError,
    InfrastructureError,
    LifecycleError,
    LockContendedError,
)
from orchestrator_fsm.lifecycle.rank_writers import RANKS_GRACE_ENV
from orchestrator_fsm.lifecycle.table import LifecycleState
from orchestrator_fsm.orchestrator import RootOrchestrator

S = LifecycleState
ConfigFactory = Callable[..., Any]


def read_run_file(root: Path) -> dict[str, Any]:
    """run.json as it is on disk."""
    data: dict[str, Any] = json.loads((root / "run.json").read_text(encoding="utf-8"))
    return data


def read_transitions(root: Path) -> list[dict[str, Any]]:
    """Every line of lifecycle.jsonl as it is on disk."""
    text = (root / "lifecycle.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def build(make_config: ConfigFactory, calls: Calls, **kwargs: Any) -> RootOrchestrator:
    deps = fake_dependencies(calls)
    deps.update(kwargs)
    return RootOrchestrator(make_config(), **deps)


def test_with_block_runs_phases_in_order_and_cleans_up(make_config: ConfigFactory) -> None:
    calls = Calls()
    orch = build(make_config, calls, rank=0, local_rank=0)
    with orch as entered:
        assert entered is orch
        assert orch.state is S.READY
        assert orch.paths is not None and orch.paths.root.is_dir()
        assert orch.run_logger is logging.getLogger("orchestrator_fsm")
        assert orch.get_device() == torch.device("cpu")
    assert orch.state is S.CLEANED
    assert calls.names() == [
        "seed_setter",
        "thread_applier",
        "system_configurator",
        "static_dir_setup",
        "log_initializer",
        "save_config",
        "dump_requirements",
        "dump_git_info",
        "prepare_environment",
        "device_resolver",
        "release_resources",
    ]
    tracker = orch.time_tracker
    assert (tracker.started, tracker.stopped) == (1, 1)  # type: ignore[attr-defined]


def test_injected_callables_get_the_reference_keywords(make_config: ConfigFactory) -> None:
    calls = Calls()
    orch = build(make_config, calls, rank=0, local_rank=0)
    with orch:
        orch.log_environment_report()
    by_name = dict(calls.log)
    assert by_name["seed_setter"] == {"seed": 1234, "strict": False, "warn_only": False}
    assert by_name["thread_applier"] == {"num_workers": orch.num_workers}
    assert orch.paths is not None
    assert by_name["log_initializer"] == {
        "name": "orchestrator_fsm",
        "log_dir": orch.paths.logs,
        "level": "INFO",
    }
    assert by_name["save_config"]["yaml_path"] == orch.paths.get_config_path()
    assert by_name["save_config"]["data"] is orch.cfg
    assert by_name["dump_requirements"]["path"] == orch.paths.reports / "requirements.txt"
    assert by_name["dump_git_info"]["path"] == orch.paths.reports / "git_info.txt"
    assert by_name["prepare_environment"]["cfg"] is orch.cfg
    assert by_name["device_resolver"] == {"device_str": "cpu", "local_rank": 0}
    report = by_name["log_initial_status"]
    assert set(report) == {
        "logger_instance",
        "cfg",
        "paths",
        "device",
        "applied_threads",
        "num_workers",
    }
    assert report["applied_threads"] == 1 and report["device"] == torch.device("cpu")


def test_strict_recipe_passes_strict_and_warn_only(make_config: ConfigFactory) -> None:
    calls = Calls()
    cfg = make_config(hardware={"reproducible": True, "deterministic_warn_only": True})
    orch = RootOrchestrator(cfg, **fake_dependencies(calls), rank=0)
    with orch:
        pass
    assert dict(calls.log)["seed_setter"] == {"seed": 1234, "strict": True, "warn_only": True}
    assert orch.num_workers == 0 and orch.repro_mode and orch.warn_only_mode


def test_initialize_core_services_is_idempotent(make_config: ConfigFactory) -> None:
    calls = Calls()
    orch = build(make_config, calls, rank=0)
    first = orch.initialize_core_services()
    second = orch.initialize_core_services()
    assert first is second is orch.paths
    assert calls.names().count("static_dir_setup") == 1
    assert calls.names().count("prepare_environment") == 1
    orch.cleanup()


def test_environment_report_is_written_once(make_config: ConfigFactory) -> None:
    calls = Calls()
    orch = build(make_config, calls, rank=0)
    orch.log_environment_report()  # before READY: nothing
    with orch:
        orch.log_environment_report()
        orch.log_environment_report()
        assert orch.state is S.REPORTED
    orch.log_environment_report()  # after cleanup: nothing
    assert calls.names().count("log_initial_status") == 1


def test_orchestrator_is_single_use(make_config: ConfigFactory) -> None:
    orch = build(make_config, Calls(), rank=0)
    with orch:
        pass
    with pytest.raises(LifecycleError, match="single-use"):
        orch.initialize_core_services()
    with pytest.raises(LifecycleError):
        orch.__enter__()
    orch.cleanup()  # a no-op, never an error
    assert orch.state is S.CLEANED


def test_exit_never_swallows_the_pipeline_error(make_config: ConfigFactory) -> None:
    orch = build(make_config, Calls(), rank=0)
    with pytest.raises(ZeroDivisionError), orch:
        _ = 1 / 0
    assert orch.state is S.CLEANED
    assert orch.paths is not None
    run = read_run_file(orch.paths.root)
    assert run["status"] == "failed"
    assert run["error"]["step"] == "pipeline"
    assert run["error"]["type"] == "ZeroDivisionError"


def test_keyboard_interrupt_in_the_pipeline_marks_the_run_interrupted(
    make_config: ConfigFactory,
) -> None:
    orch = build(make_config, Calls(), rank=0)
    with pytest.raises(KeyboardInterrupt), orch:
        raise KeyboardInterrupt
    assert orch.paths is not None
    assert read_run_file(orch.paths.root)["status"] == "interrupted"


def test_lock_contention_propagates_and_rolls_back(make_config: ConfigFactory) -> None:
    calls = Calls()
    calls.fail["prepare_environment"] = LockContendedError("held by pid 42", holder={"pid": 42})
    before = process_fingerprint()
    orch = build(make_config, calls, rank=0)
    with pytest.raises(LockContendedError, match="pid 42"), orch:
        pytest.fail("the with-block body must not run")
    assert orch.state is S.FAILED
    assert process_fingerprint() == before
    assert "release_resources" not in calls.names()  # the lock was never taken
    assert orch.paths is not None
    run = read_run_file(orch.paths.root)
    assert run["status"] == "refused"
    assert run["error"] == {
        "type": "LockContendedError",
        "message": "held by pid 42",
        "step": "acquire_lock",
        "where": run["error"]["where"],
    }
    assert run["error"]["where"].endswith("fakes.py:30 in hit")


def test_any_other_lock_failure_is_an_infrastructure_error_with_the_cause(
    make_config: ConfigFactory,
) -> None:
    calls = Calls()
    cause = PermissionError("read-only lock dir")
    calls.fail["prepare_environment"] = cause
    orch = build(make_config, calls, rank=0)
    with pytest.raises(InfrastructureError) as caught:
        orch.initialize_core_services()
    assert caught.value.__cause__ is cause
    assert orch.state is S.FAILED


def test_device_failure_is_a_device_error_and_releases_the_lock(
    make_config: ConfigFactory,
) -> None:
    calls = Calls()
    cause = RuntimeError("CUDA driver crashed")
    calls.fail["device_resolver"] = cause
    orch = build(make_config, calls, rank=0)
    with pytest.raises(DeviceError, match="CUDA driver crashed") as caught:
        orch.__enter__()
    assert caught.value.__cause__ is cause
    assert calls.names()[-1] == "release_resources"
    assert not orch.infra.held  # type: ignore[attr-defined]


def test_failure_in_manifest_rolls_back_logging(make_config: ConfigFactory) -> None:
    calls = Calls()
    calls.fail["dump_requirements"] = StepFailure("metadata unreadable")
    package_logger = logging.getLogger("orchestrator_fsm")
    handlers = list(package_logger.handlers)
    orch = build(make_config, calls, rank=0)
    with pytest.raises(StepFailure):
        orch.initialize_core_services()
    assert package_logger.handlers == handlers
    assert orch.state is S.FAILED


def test_other_ranks_join_rank_0s_run_directory_and_skip_manifest_lock_and_report(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator_fsm.layout import rank_file
    from orchestrator_fsm.lifecycle.record import read_run

    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # one job: the ranks belong together
    # Rank 1 never comes: rank 0 does not wait for it at its end.
    monkeypatch.setenv(RANKS_GRACE_ENV, "0")
    with build(make_config, Calls(), rank=0, local_rank=0, world_size=3) as main_run:
        assert main_run.paths is not None
        calls = Calls()
        orch = build(make_config, calls, rank=2, local_rank=1, world_size=3)
        with orch:
            orch.log_environment_report()
            assert orch.paths == main_run.paths
            assert not orch.is_main_process
        assert calls.names() == [
            "seed_setter",
            "thread_applier",
            "system_configurator",
            "log_initializer",
            "device_resolver",
        ]
        assert dict(calls.log)["device_resolver"] == {"device_str": "cpu", "local_rank": 1}
        assert [r.dest for r in orch.machine.history] == [
            S.SEEDED,
            S.CONFIGURED,
            S.PROVISIONED,
            S.LOGGED,
            S.READY,
            S.REPORTED,
            S.CLEANED,
        ]
        own = read_run(main_run.paths.root).ranks
        assert [(r.rank, r.status) for r in own] == [(2, "completed")]
        assert rank_file(main_run.paths.root, 2).is_file()
        assert not (main_run.paths.root / "reports" / "rank2").exists()


def test_a_completed_rank_0_waits_the_grace_for_the_other_ranks_and_no_longer(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    monkeypatch.setenv(RANKS_GRACE_ENV, "0.5")
    orch = build(make_config, Calls(), rank=0, local_rank=0, world_size=2)
    orch.__enter__()
    started = time.monotonic()
    orch.__exit__(None, None, None)
    waited = time.monotonic() - started
    assert 0.5 <= waited < 10, waited
    assert orch.record is not None and orch.record.status == "completed"


def test_a_rank_that_shares_nothing_with_a_rank_0_takes_the_reference_shortcut(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 22 changed this: such a rank used to fail ("the launcher names no job").
    clear_launcher(monkeypatch)
    cfg = make_config()
    calls = Calls()
    with caplog.at_level(logging.WARNING, logger="orchestrator_fsm"):
        orch = build(make_config, calls, rank=1, local_rank=0, world_size=2)
        with orch:
            assert orch.paths is None and orch.run_logger is None
            assert orch.state is S.READY
    assert [r.dest for r in orch.machine.history] == [S.SEEDED, S.CONFIGURED, S.READY, S.CLEANED]
    assert dict(calls.log)["device_resolver"] == {"device_str": "cpu", "local_rank": 0}
    warnings = [r for r in caplog.records if "shares no launcher job" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    assert not Path(cfg.telemetry.output_dir).exists()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (0, 0)),
        ({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}, (3, 1)),
        (
            {"SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_LOCALID": "2", "SLURM_NTASKS": "8"},
            (5, 2),
        ),
        ({"SLURM_JOB_ID": "9", "SLURM_PROCID": "5", "SLURM_NTASKS": "8"}, (0, 0)),
        ({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "7", "LOCAL_RANK": "0"}, (1, 0)),
    ],
    ids=["no launcher", "torchrun", "srun step", "sbatch batch script", "srun torchrun"],
)
def test_rank_defaults_from_the_environment(
    make_config: ConfigFactory,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    expected: tuple[int, int],
) -> None:
    for name in LAUNCHER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    orch = RootOrchestrator(make_config(), **fake_dependencies(Calls()))
    assert (orch.rank, orch.local_rank) == expected
    assert orch.is_main_process is (expected[0] == 0)


def clear_launcher(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name in LAUNCHER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_constructor_arguments_win_over_the_launcher(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_launcher(monkeypatch, RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    orch = build(make_config, Calls(), rank=0, local_rank=0, world_size=1)
    assert (orch.rank, orch.local_rank, orch.world_size, orch.is_main_process) == (0, 0, 1, True)
    assert (orch.launch.rank, orch.launch.world_size) == (0, 1)
    assert (orch.seed_tree.rank, orch.seed_tree.world_size) == (0, 1)


def slurm_step_of_job_4242(monkeypatch: pytest.MonkeyPatch, *, rank: int, tasks: int) -> None:
    """This process as task ``rank`` of ``tasks`` on one node, in step 0 of SLURM job
    4242, restarted once."""
    clear_launcher(
        monkeypatch,
        SLURM_JOB_ID="4242",
        SLURM_STEP_ID="0",
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank),
        SLURM_STEP_NUM_TASKS=str(tasks),
        SLURM_STEP_TASKS_PER_NODE=str(tasks),
        SLURM_RESTART_COUNT="1",
    )


def test_the_run_carries_the_launch_with_the_job_identity(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    slurm_step_of_job_4242(monkeypatch, rank=1, tasks=2)
    orch = build(make_config, Calls())
    assert (orch.launch.launcher, orch.launch.job_id, orch.launch.restart_count) == (
        "slurm",
        "4242.0",
        1,
    )
    assert (orch.rank, orch.local_rank, orch.world_size) == (1, 1, 2)


def test_a_run_records_the_job_and_restart_of_its_launch(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    slurm_step_of_job_4242(monkeypatch, rank=0, tasks=1)
    with build(make_config, Calls()) as orch:
        record = orch.record
    assert record is not None
    assert record.restart_count == 1
    assert record.job is not None and record.job.startswith("4242")


def test_a_local_rank_without_a_global_rank_stops_the_run_before_it_starts(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_launcher(monkeypatch, LOCAL_RANK="1", WORLD_SIZE="2")
    with pytest.raises(ValueError, match="no RANK"):
        build(make_config, Calls())
    assert build(make_config, Calls(), rank=1).rank == 1


def test_an_explicit_rank_outside_the_explicit_world_is_refused(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_launcher(monkeypatch)
    with pytest.raises(ValueError, match=r"rank=2 is not below world_size=2"):
        build(make_config, Calls(), rank=2, world_size=2)


def test_the_report_describes_the_run_not_the_environment(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear_launcher(monkeypatch, RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", TORCHELASTIC_RUN_ID="e")
    # Rank 1 is not launched: rank 0 does not wait for it at its end.
    monkeypatch.setenv(RANKS_GRACE_ENV, "0")
    with RootOrchestrator(make_config(), rank=0, local_rank=0) as orch:
        order = orch.seed_tree.shared_seed("data_order")
        orch.log_environment_report()
        assert orch.paths is not None
        report = json.loads((orch.paths.reports / "environment.json").read_text("utf-8"))
    distributed = report["distributed"]
    assert (distributed["rank"], distributed["local_rank"], distributed["world_size"]) == (0, 0, 2)
    assert (distributed["launcher"], distributed["job_id"]) == ("torchrun", "e")
    assert (report["seeds"]["rank"], report["seeds"]["world_size"]) == (0, 2)
    assert report["seeds"]["derived"]["shared/data_order"] == order


def test_a_with_block_leaves_no_trace_in_the_process(make_config: ConfigFactory) -> None:
    before = process_fingerprint()
    orch = build(make_config, Calls(), rank=0)
    with orch:
        inside = process_fingerprint()
        assert inside["env"][FAKE_ENV_VAR] == "seeded"
        assert inside["deterministic"] is True
        assert inside["threads"] == 1
    assert process_fingerprint() == before


def test_journal_records_every_transition_including_those_before_the_directory(
    make_config: ConfigFactory,
) -> None:
    orch = build(make_config, Calls(), rank=0)
    with orch:
        orch.log_environment_report()
    assert orch.paths is not None
    lines = read_transitions(orch.paths.root)
    assert [(line["source"], line["dest"]) for line in lines] == [
        ("created", "seeded"),
        ("seeded", "configured"),
        ("configured", "provisioned"),
        ("provisioned", "logged"),
        ("logged", "persisted"),
        ("persisted", "guarded"),
        ("guarded", "ready"),
        ("ready", "reported"),
        ("reported", "cleaned"),
    ]
    for line in lines:
        assert {"source", "dest", "trigger", "started_at", "duration_s", "ok", "error"} <= set(line)
        assert line["rank"] == 0 and line["pid"] == os.getpid() and line["ok"] is True
    run = read_run_file(orch.paths.root)
    assert run["status"] == "completed"
    assert run["state"] == "cleaned"
    assert run["ended_at"] is not None
    assert set(run["phases"]) >= {"seed", "provision", "acquire_lock", "report", "cleanup"}
    assert run["run_id"] == orch.paths.run_id


def test_run_json_says_running_while_the_pipeline_runs(make_config: ConfigFactory) -> None:
    orch = build(make_config, Calls(), rank=0)
    with orch:
        assert orch.paths is not None
        run = json.loads((orch.paths.root / "run.json").read_text())
        assert run["status"] == "running"
        assert run["pid"] == os.getpid()
        assert run["ended_at"] is None


def test_step_by_step_driving_matches_the_with_block(make_config: ConfigFactory) -> None:
    orch = build(make_config, Calls(), rank=0)
    states = []
    while orch.machine.can_advance():
        states.append(orch.machine.advance())
    assert states[-1] is S.CLEANED
    assert S.REPORTED in states


def test_injected_failure_in_seed_setter_leaves_no_flags_behind(
    make_config: ConfigFactory,
) -> None:
    calls = Calls()
    deps = fake_dependencies(calls)

    def half_done_seed_setter(seed: int, **kwargs: Any) -> None:
        os.environ[FAKE_ENV_VAR] = "half"
        torch.use_deterministic_algorithms(True)
        raise StepFailure("seeding exploded")

    deps["seed_setter"] = half_done_seed_setter
    before = process_fingerprint()
    orch = RootOrchestrator(make_config(), **deps, rank=0)
    with pytest.raises(StepFailure):
        orch.__enter__()
    assert process_fingerprint() == before


def test_time_tracker_receives_per_phase_durations(make_config: ConfigFactory) -> None:
    from orchestrator_fsm.phases.timing import TimeTracker

    tracker = TimeTracker()
    deps = fake_dependencies(Calls())
    deps["time_tracker"] = tracker
    orch = RootOrchestrator(make_config(), **deps, rank=0)
    with orch:
        orch.log_environment_report()
    assert set(tracker.phase_durations) == {r.step for r in orch.machine.history}
    assert orch.paths is not None
    run = read_run_file(orch.paths.root)
    assert run["elapsed_s"] == pytest.approx(tracker.elapsed_seconds, abs=1e-5)


@pytest.mark.parametrize(("code", "status"), [(0, "completed"), (None, "completed"), (3, "failed")])
def test_sys_exit_in_the_pipeline_is_judged_by_its_code(
    make_config: ConfigFactory, code: int | None, status: str
) -> None:
    orch = build(make_config, Calls(), rank=0)
    with pytest.raises(SystemExit), orch:
        raise SystemExit(code)
    assert orch.paths is not None
    assert read_run_file(orch.paths.root)["status"] == status


def test_a_rank_joins_through_the_rendezvous_endpoint_only_within_its_start_window(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A launcher that names no job (PyTorchJob, DeepSpeed): the endpoint keys the job,
    # and a rank 0 of an earlier launch on the same endpoint is not this launch's.
    import json as _json
    from datetime import datetime, timedelta, timezone

    from fakes import pretend_rank_zero_is_ready

    from orchestrator_fsm._system import process_started_at
    from orchestrator_fsm.errors import InfrastructureError
    from orchestrator_fsm.layout import job_entry_file
    from orchestrator_fsm.lifecycle.job_index import job_key

    clear_launcher(
        monkeypatch, RANK="1", WORLD_SIZE="2", MASTER_ADDR="10.1.2.3", MASTER_PORT="29555"
    )
    cfg = make_config(infrastructure={"join_timeout_s": 1})
    orch = RootOrchestrator(cfg, **fake_dependencies(Calls()))
    assert orch.launch.rendezvous == "10.1.2.3:29555"
    root = pretend_rank_zero_is_ready(cfg, orch.launch)
    key = job_key(orch.launch, cfg.config_hash())
    assert key is not None and key.startswith("rdzv-10-1-2-3-29555-w2-")
    entry_file = job_entry_file(cfg.telemetry.output_dir, key)
    entry = _json.loads(entry_file.read_text(encoding="utf-8"))
    entry["started_at"] = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    entry_file.write_text(_json.dumps(entry), encoding="utf-8")
    with pytest.raises(InfrastructureError, match="never became ready"):
        orch.__enter__()

    # The same entry from a rank 0 that started with this rank (with this process: the
    # test session may be older than the window) is joined.
    entry["started_at"] = process_started_at().isoformat()
    entry_file.write_text(_json.dumps(entry), encoding="utf-8")
    monkeypatch.setenv(RANKS_GRACE_ENV, "0")
    with RootOrchestrator(cfg, **fake_dependencies(Calls())) as joined:
        assert joined.paths is not None and joined.paths.root == root
