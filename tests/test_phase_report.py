"""The phase 7 environment report: what it records, where, and what it must leave out."""

from __future__ import annotations

import io
import json
import logging
import os
import platform
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from orchestrator_fsm._version import __version__
from orchestrator_fsm.distributed import LAUNCHER_ENV_VARS, Launch
from orchestrator_fsm.layout import RunPaths
from orchestrator_fsm.phases import report as report_module
from orchestrator_fsm.phases.report import (
    REPORT_FILE,
    Reporter,
    build_environment_report,
    render_report_lines,
)
from orchestrator_fsm.seeds import SeedTree

SECTIONS = (
    "run",
    "hardware",
    "determinism",
    "seeds",
    "threads",
    "paths",
    "git",
    "versions",
    "distributed",
    "environment",
)
SECRET_NAME = "ORCHESTRATOR_FSM_TEST_SERVICE_TOKEN"
SECRET_VALUE = "s3cr3t-do-not-log-4f9a"


@pytest.fixture
def cfg(make_config: Callable[..., Any]) -> Any:
    return make_config(
        hardware={"device": "cpu", "reproducible": True, "project_name": "report-proj"},
        training={"seed": 4242},
    )


@pytest.fixture
def paths(tmp_path: Path, cfg: Any) -> RunPaths:
    return RunPaths.create(
        tmp_path / "outputs", cfg.dataset.name, cfg.architecture.name, cfg.config_hash()
    )


@pytest.fixture(autouse=True)
def _single_process_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCHER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def captured_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A private logger writing to a string, detached again afterwards."""
    stream = io.StringIO()
    logger = logging.getLogger("tests.report")
    handler = logging.StreamHandler(stream)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.level, logger.propagate = saved


def report_for(cfg: Any, paths: RunPaths, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "device": torch.device("cpu"),
        "applied_threads": 2,
        "num_workers": 0,
    }
    args.update(overrides)
    return build_environment_report(cfg, paths, **args)


def test_report_has_every_section_in_order(cfg: Any, paths: RunPaths) -> None:
    assert tuple(report_for(cfg, paths)) == SECTIONS


def test_run_section_names_the_run_and_its_config(cfg: Any, paths: RunPaths) -> None:
    run = report_for(cfg, paths)["run"]
    assert run["run_id"] == paths.run_id
    assert run["project"] == "report-proj"
    assert run["dataset"] == cfg.dataset.name
    assert run["architecture"] == cfg.architecture.name
    assert run["config_hash"] == cfg.config_hash()
    assert run["generated_at"].endswith("+00:00")


def test_run_section_names_the_recipe_file(tmp_path: Path, paths: RunPaths) -> None:
    from conftest import minimal_recipe

    from orchestrator_fsm.config import Config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(minimal_recipe(tmp_path)))
    cfg = Config.from_recipe(recipe)

    run = report_for(cfg, paths)["run"]

    assert Path(run["recipe"]).resolve() == recipe.resolve()
    assert report_for(Config.from_dict(minimal_recipe(tmp_path)), paths)["run"]["recipe"] is None


def test_hardware_section_reports_device_and_cpus(cfg: Any, paths: RunPaths) -> None:
    hardware = report_for(cfg, paths)["hardware"]
    assert hardware["requested_device"] == "cpu"
    assert hardware["device"] == "cpu"
    assert hardware["device_type"] == "cpu"
    assert hardware["cpu_count"] == os.cpu_count()
    assert hardware["cuda"]["available"] is torch.cuda.is_available()


def test_hardware_section_counts_the_cpus_this_process_may_use_and_mps(
    cfg: Any, paths: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A taskset/container restriction to three CPUs, and an Apple GPU that is not here.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5, 7}, raising=False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    hardware = report_for(cfg, paths)["hardware"]
    assert hardware["usable_cpus"] == 3
    assert hardware["mps_available"] is True


def test_hardware_section_lists_cuda_devices_when_available(
    cfg: Any, paths: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No GPU here: pretend torch sees two.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"Fake GPU {index}")

    hardware = report_for(cfg, paths, device="cuda:1")["hardware"]

    assert hardware["device"] == "cuda:1"
    assert hardware["device_type"] == "cuda"
    assert hardware["cuda"]["available"] is True
    assert hardware["cuda"]["device_count"] == 2
    assert hardware["cuda"]["devices"] == ["Fake GPU 0", "Fake GPU 1"]


def test_determinism_section_shows_torch_flags_as_actually_set(cfg: Any, paths: RunPaths) -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

    determinism = report_for(cfg, paths)["determinism"]

    assert determinism["requested"] == {"reproducible": True, "warn_only": False}
    assert determinism["mode"] == "strict-warn-only"
    assert determinism["torch"]["deterministic_algorithms"] is True
    assert determinism["torch"]["deterministic_warn_only"] is True
    assert determinism["torch"]["cudnn_deterministic"] is True
    assert determinism["torch"]["cudnn_benchmark"] is False

    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    determinism = report_for(cfg, paths)["determinism"]
    assert determinism["torch"]["deterministic_algorithms"] is False
    assert determinism["torch"]["cudnn_benchmark"] is True


def test_seeds_section_holds_the_run_seed_and_every_derived_seed(
    cfg: Any, paths: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")

    seeds = report_for(cfg, paths)["seeds"]

    assert seeds["seed"] == 4242
    assert seeds == SeedTree(4242, 0, 4).as_dict()
    assert seeds["world_size"] == 4
    assert seeds["dataloader"] == SeedTree(4242, 0, 4).seed_for("dataloader")


def test_threads_section_reports_applied_and_actual_threads(cfg: Any, paths: RunPaths) -> None:
    threads = report_for(cfg, paths, applied_threads=3, num_workers=5)["threads"]
    assert threads["applied_threads"] == 3
    assert threads["num_workers"] == 5
    assert threads["torch_num_threads"] == torch.get_num_threads()
    assert threads["torch_interop_threads"] == torch.get_num_interop_threads()


def test_paths_section_lists_every_run_path(cfg: Any, paths: RunPaths) -> None:
    reported = report_for(cfg, paths)["paths"]
    for name in ("root", "logs", "reports", "checkpoints", "figures", "exports", "database"):
        assert reported[name] == str(getattr(paths, name))
    assert reported["config"] == str(paths.get_config_path())


def test_git_section_is_null_without_git_info(cfg: Any, paths: RunPaths) -> None:
    assert not (paths.reports / "git_info.txt").exists()
    assert report_for(cfg, paths)["git"] is None


def test_git_section_parses_git_info_and_redacts_remote_password(cfg: Any, paths: RunPaths) -> None:
    (paths.reports / "git_info.txt").write_text(
        "commit: 0123456789abcdef\n"
        "branch: main\n"
        "dirty: true\n"
        "\n"
        "remote: https://alice:hunter2@git.example.com/team/repo.git\n"
        "not a key value line\n"
    )

    git = report_for(cfg, paths)["git"]

    assert git["commit"] == "0123456789abcdef"
    assert git["branch"] == "main"
    assert git["dirty"] == "true"
    assert "hunter2" not in git["remote"]
    assert "git.example.com/team/repo.git" in git["remote"]
    assert set(git) == {"commit", "branch", "dirty", "remote"}


def test_versions_section_names_the_installed_versions(cfg: Any, paths: RunPaths) -> None:
    versions = report_for(cfg, paths)["versions"]
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == torch.__version__
    assert versions["numpy"] == np.__version__
    assert versions["orchestrator_fsm"] == metadata.version("orchestrator-fsm")
    assert versions["platform"] == platform.platform()


def test_versions_section_falls_back_to_the_source_version_when_not_installed(
    cfg: Any, paths: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run from a source tree without installing: no distribution metadata to read.
    monkeypatch.setattr(report_module, "distribution_version", lambda name: None)
    assert report_for(cfg, paths)["versions"]["orchestrator_fsm"] == __version__


def test_distributed_section_reads_the_launch_environment(
    cfg: Any, paths: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")

    distributed = report_for(cfg, paths)["distributed"]

    assert distributed == {
        "rank": 0,
        "local_rank": 0,
        "world_size": 2,
        "launcher": "torchrun",
        "local_world_size": 2,
        "node_rank": 0,
        "job_id": None,
        "restart_count": 0,
        "rendezvous": "10.0.0.1:29500",
        "process_group_run": None,
        "pid": os.getpid(),
        "host": distributed["host"],
    }
    assert distributed["host"]


def test_distributed_and_seeds_sections_describe_the_launch_and_seed_tree_given(
    cfg: Any, paths: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    launch = Launch("slurm", 0, 0, 4, 2, 0, job_id="4242.0", restart_count=1)
    tree = SeedTree(4242, 0, 4)
    tree.shared_seed("data_order")

    report = report_for(cfg, paths, launch=launch, seed_tree=tree)

    distributed = report["distributed"]
    assert (distributed["rank"], distributed["world_size"], distributed["job_id"]) == (
        0,
        4,
        "4242.0",
    )
    assert distributed["restart_count"] == 1
    assert report["seeds"] == tree.as_dict()
    assert "shared/data_order" in report["seeds"]["derived"]


def test_environment_section_lists_only_the_named_variables_that_are_set(
    cfg: Any, paths: RunPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(SECRET_NAME, SECRET_VALUE)

    environment = report_for(cfg, paths)["environment"]

    assert environment["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert environment["OMP_NUM_THREADS"] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in environment
    assert SECRET_NAME not in environment


def test_log_initial_status_writes_environment_json_and_logs_every_section(
    cfg: Any, paths: RunPaths, captured_log: tuple[logging.Logger, io.StringIO]
) -> None:
    logger, stream = captured_log

    Reporter().log_initial_status(
        logger, cfg, paths, torch.device("cpu"), applied_threads=2, num_workers=1
    )

    target = paths.reports / REPORT_FILE
    saved = json.loads(target.read_text())
    assert set(saved) == set(SECTIONS)
    assert saved["run"]["run_id"] == paths.run_id
    assert saved["threads"]["applied_threads"] == 2
    assert saved["threads"]["num_workers"] == 1
    assert saved["seeds"]["seed"] == 4242
    assert saved["hardware"]["device"] == "cpu"
    assert saved["git"] is None
    assert sorted(p.name for p in paths.reports.iterdir()) == [REPORT_FILE]

    log_text = stream.getvalue()
    for section in SECTIONS:
        assert f"[{section}]" in log_text
    assert paths.run_id in log_text
    assert str(target) in log_text


def test_report_never_dumps_the_environment(
    cfg: Any,
    paths: RunPaths,
    monkeypatch: pytest.MonkeyPatch,
    captured_log: tuple[logging.Logger, io.StringIO],
) -> None:
    monkeypatch.setenv(SECRET_NAME, SECRET_VALUE)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_VALUE + "-aws")
    logger, stream = captured_log

    Reporter().log_initial_status(
        logger, cfg, paths, torch.device("cpu"), applied_threads=1, num_workers=0
    )

    saved_text = (paths.reports / REPORT_FILE).read_text()
    for text in (saved_text, stream.getvalue()):
        assert SECRET_VALUE not in text
        assert SECRET_NAME not in text
        assert "AWS_SECRET_ACCESS_KEY" not in text


def test_rendered_lines_align_keys_and_flatten_nested_values() -> None:
    lines = render_report_lines(
        {
            "hardware": {
                "device": "cpu",
                "cuda": {"available": False, "devices": [], "cuda_version": None},
                "names": ["a", "b"],
            },
            "seeds": {"seed": 7, "derived": {}},
            "git": None,
            "environment": {},
        }
    )
    assert lines == [
        "[hardware]",
        "  device            : cpu",
        "  cuda.available    : False",
        "  cuda.devices      : (none)",
        "  cuda.cuda_version : -",
        "  names             : a, b",
        "[seeds]",
        "  seed    : 7",
        "  derived : (none)",
        "[git]",
        "  (not recorded)",
        "[environment]",
        "  (none)",
    ]
