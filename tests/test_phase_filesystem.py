from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import re
import secrets
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator_fsm import layout
from orchestrator_fsm.phases.filesystem import (
    RUN_SUBDIRECTORIES,
    RunPaths,
    default_cache_dir,
    default_lock_dir,
    setup_static_directories,
)

HASH = "ABCDEF0123456789" * 4
NOW = datetime(2024, 3, 5, 7, 8, 9, tzinfo=timezone.utc)
RUN_ID = re.compile(r"^\d{8}-\d{6}-[a-z0-9_-]+-[a-z0-9_-]+-[0-9a-f]{6}-[0-9a-f]{4}$")


def test_run_id_has_utc_time_names_hash_and_random_suffix(tmp_path: Path) -> None:
    paths = RunPaths.create(tmp_path / "out", "MNIST", "ResNet-18", HASH, now=NOW)

    assert re.fullmatch(r"20240305-070809-mnist-resnet-18-abcdef-[0-9a-f]{4}", paths.run_id)
    assert paths.root == (tmp_path / "out" / paths.run_id).absolute()
    assert paths.root.is_dir()


def test_every_sub_folder_is_created_and_named_on_the_object(tmp_path: Path) -> None:
    paths = RunPaths.create(tmp_path, "data", "model", HASH)

    assert sorted(p.name for p in paths.root.iterdir()) == sorted(RUN_SUBDIRECTORIES)
    for name in RUN_SUBDIRECTORIES:
        assert getattr(paths, name) == paths.root / name
        assert getattr(paths, name).is_dir()
    assert paths.get_config_path() == paths.root / "reports" / "config.yaml"


def test_timestamp_is_converted_to_utc(tmp_path: Path) -> None:
    plus_two = timezone(timedelta(hours=2))
    paths = RunPaths.create(
        tmp_path, "d", "a", HASH, now=datetime(2024, 1, 1, 1, 30, tzinfo=plus_two)
    )

    assert paths.run_id.startswith("20231231-233000-")


def test_run_paths_are_frozen(tmp_path: Path) -> None:
    paths = RunPaths.create(tmp_path, "d", "a", HASH)

    with pytest.raises(AttributeError):
        paths.root = tmp_path  # type: ignore[misc]


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "..",
        "a/b\\c",
        "C:\\temp",
        "tab\there\x00nul\x1fctl\x7f",
        "Ünïcødé 数据集",
        "🙂",
        "",
        "x" * 1000,
        "-_-leading-and-trailing-_-",
    ],
)
def test_names_are_reduced_to_safe_bounded_slugs(tmp_path: Path, name: str) -> None:
    paths = RunPaths.create(tmp_path, name, name, HASH, now=NOW)

    assert RUN_ID.fullmatch(paths.run_id), paths.run_id
    assert ".." not in paths.run_id and "/" not in paths.run_id and "\\" not in paths.run_id
    assert paths.root.parent == tmp_path.absolute()
    assert len(paths.run_id) <= len("20240305-070809-") + 40 + 1 + 40 + len("-abcdef-0000")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(dataset=st.text(max_size=80), architecture=st.text(max_size=80))
def test_any_names_give_a_direct_child_of_the_output_dir(
    tmp_path: Path, dataset: str, architecture: str
) -> None:
    paths = RunPaths.create(tmp_path, dataset, architecture, HASH, now=NOW)

    assert RUN_ID.fullmatch(paths.run_id), paths.run_id
    assert paths.root.parent == tmp_path.absolute()


@pytest.mark.parametrize("bad_hash", ["", "abc", "xyz123456", "12345g"])
def test_config_hash_without_six_hex_digits_is_rejected(tmp_path: Path, bad_hash: str) -> None:
    with pytest.raises(ValueError, match="hexadecimal") as caught:
        RunPaths.create(tmp_path, "d", "a", bad_hash)

    assert repr(bad_hash) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_output_dir_is_created_with_parents(tmp_path: Path) -> None:
    output = tmp_path / "deep" / "er" / "outputs"

    paths = RunPaths.create(output, "d", "a", HASH)

    assert paths.root.parent == output.absolute()


def test_relative_output_dir_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    paths = RunPaths.create(Path("outputs"), "d", "a", HASH)

    assert paths.root.is_absolute()
    assert paths.root.parent == tmp_path.absolute() / "outputs"


def test_output_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    output = tmp_path / "outputs"
    output.write_text("not a directory")

    with pytest.raises(NotADirectoryError, match="not a directory") as caught:
        RunPaths.create(output, "d", "a", HASH)

    assert str(output) in str(caught.value)
    assert output.read_text() == "not a directory"


def test_output_dir_below_a_file_is_an_os_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    output = blocker / "outputs"

    with pytest.raises(OSError) as caught:
        RunPaths.create(output, "d", "a", HASH)

    assert str(output) in str(caught.value)


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create entries in. Permission bits do not stop
    the superuser (CI runs as root), so there the kernel's /sys stands in."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        output = tmp_path / "readonly"
        output.mkdir()
        output.chmod(0o500)
        return output
    return Path("/sys") / f"orchestrator-fsm-test-{os.getpid()}"


def test_unwritable_output_dir_is_an_os_error_naming_the_path(tmp_path: Path) -> None:
    output = _unwritable_dir(tmp_path)
    try:
        with pytest.raises(PermissionError) as caught:
            RunPaths.create(output, "d", "a", HASH)
    finally:
        if output.is_relative_to(tmp_path):
            output.chmod(0o700)

    assert str(output) in str(caught.value)


def test_collision_draws_a_new_suffix_and_leaves_the_existing_run_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    draws = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(layout, "_random_suffix", lambda: next(draws))
    first = RunPaths.create(tmp_path, "d", "a", HASH, now=NOW)
    marker = first.logs / "run.log"
    marker.write_text("first run")

    second = RunPaths.create(tmp_path, "d", "a", HASH, now=NOW)

    assert first.run_id.endswith("-aaaa")
    assert second.run_id.endswith("-bbbb")
    assert marker.read_text() == "first run"
    assert list(second.logs.iterdir()) == []


def test_endless_collisions_give_up_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = itertools.count()

    def always_the_same() -> str:
        next(calls)
        return "aaaa"

    monkeypatch.setattr(layout, "_random_suffix", always_the_same)
    RunPaths.create(tmp_path, "d", "a", HASH, now=NOW)

    with pytest.raises(FileExistsError, match="attempts") as caught:
        RunPaths.create(tmp_path, "d", "a", HASH, now=NOW)

    assert str(tmp_path) in str(caught.value)
    assert next(calls) == 1 + layout._MAX_CREATE_ATTEMPTS
    assert len(list(tmp_path.iterdir())) == 1


def test_creation_never_lists_the_output_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        (tmp_path / f"older-run-{i}").mkdir()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the output directory was listed")

    monkeypatch.setattr(os, "listdir", refuse)
    monkeypatch.setattr(os, "scandir", refuse)
    monkeypatch.setattr(Path, "iterdir", refuse)
    monkeypatch.setattr(Path, "glob", refuse)

    paths = RunPaths.create(tmp_path, "d", "a", HASH)

    assert paths.root.is_dir()


def test_concurrent_threads_with_identical_config_get_distinct_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tiny suffix space makes the threads collide often, exercising the retry path.
    monkeypatch.setattr(layout, "_random_suffix", lambda: f"{secrets.randbelow(64):04x}")
    workers = 32
    start = threading.Barrier(workers)

    def create(_: int) -> RunPaths:
        start.wait()
        return RunPaths.create(tmp_path, "d", "a", HASH, now=NOW)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(create, range(workers)))

    roots = {paths.root for paths in results}
    assert len(roots) == workers
    assert set(tmp_path.iterdir()) == roots
    assert all((root / "database").is_dir() for root in roots)


@pytest.mark.slow
def test_concurrent_processes_with_identical_config_get_distinct_directories(
    tmp_path: Path,
) -> None:
    jobs = [(tmp_path, "d", "a", HASH)] * 12
    with multiprocessing.get_context("spawn").Pool(processes=3) as pool:
        results = pool.starmap(_create_in_child, jobs)

    roots = {Path(root) for root in results}
    assert len(roots) == len(jobs)
    assert set(tmp_path.iterdir()) == roots


def _create_in_child(output: Path, dataset: str, architecture: str, config_hash: str) -> str:
    return str(RunPaths.create(output, dataset, architecture, config_hash, now=NOW).root)


def test_creation_draws_nothing_from_random_numpy_or_torch(tmp_path: Path) -> None:
    def first_draws() -> tuple[float, float, float]:
        return random.random(), float(np.random.rand()), float(torch.rand(1).item())

    def seed_all() -> None:
        random.seed(7)
        np.random.seed(7)
        torch.manual_seed(7)

    seed_all()
    expected = first_draws()
    seed_all()
    RunPaths.create(tmp_path, "d", "a", HASH)

    assert first_draws() == expected


def test_from_root_describes_an_existing_run(tmp_path: Path) -> None:
    created = RunPaths.create(tmp_path, "d", "a", HASH)

    assert RunPaths.from_root(created.root) == created
    assert RunPaths.from_root(str(created.root)).run_id == created.run_id


def test_from_root_of_a_missing_directory_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "20240101-000000-d-a-abcdef-0000"

    with pytest.raises(FileNotFoundError) as caught:
        RunPaths.from_root(missing)

    assert str(missing) in str(caught.value)


def test_from_root_of_a_file_is_not_a_directory_error(tmp_path: Path) -> None:
    file = tmp_path / "run"
    file.write_text("")

    with pytest.raises(NotADirectoryError):
        RunPaths.from_root(file)


def test_cache_dir_follows_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    assert default_cache_dir() == tmp_path / "xdg" / "orchestrator-fsm"
    assert default_lock_dir() == tmp_path / "xdg" / "orchestrator-fsm" / "locks"


def test_relative_xdg_cache_home_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert default_cache_dir() == tmp_path / "home" / ".cache" / "orchestrator-fsm"


@pytest.fixture
def unusable_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME is a file, no XDG_CACHE_HOME: the cache must fall back to ``tmp_path/tmp``."""
    home = tmp_path / "home"
    home.write_text("a file where the home directory should be")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path / "tmp"


def test_unusable_home_falls_back_to_a_per_user_temp_dir(unusable_home: Path) -> None:
    cache = default_cache_dir()

    assert cache.parent == unusable_home
    assert cache.name.startswith("orchestrator-fsm-")


def test_static_directories_are_created_idempotently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    assert setup_static_directories() is None  # type: ignore[func-returns-value]
    (default_lock_dir() / "held.lock").write_text("")
    setup_static_directories()

    assert default_cache_dir().is_dir()
    assert (default_lock_dir() / "held.lock").exists()


def test_fallback_static_directory_is_private(unusable_home: Path) -> None:
    setup_static_directories()

    cache = default_cache_dir()
    assert (cache / "locks").is_dir()
    assert cache.stat().st_mode & 0o077 == 0


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="ownership checks need POSIX uids")
def test_fallback_planted_as_a_symlink_is_refused(tmp_path: Path, unusable_home: Path) -> None:
    unusable_home.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    default_cache_dir().symlink_to(elsewhere)

    with pytest.raises(PermissionError, match="symbolic link") as caught:
        setup_static_directories()

    assert str(default_cache_dir()) in str(caught.value)
    assert list(elsewhere.iterdir()) == []
