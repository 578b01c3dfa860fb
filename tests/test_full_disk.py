"""A full disk never leaves a lying record: real small tmpfs mounts where the machine
allows them (root, mount permitted), an injected ENOSPC at the write otherwise."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, minimal_recipe, run_dirs, write_recipe

from orchestrator_fsm import RootOrchestrator
from orchestrator_fsm import _fs as fs_module
from orchestrator_fsm._fs import append_whole
from orchestrator_fsm.config import Config
from orchestrator_fsm.layout import RESERVE_FILE
from orchestrator_fsm.lifecycle import record_files as record_module
from orchestrator_fsm.lifecycle.record import read_run, run_status


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs of its own (skipped where mounting is not allowed)."""
    where = tmp_path / "disk"
    if not _mount_tmpfs(where, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30, check=False)


def fill(disk: Path, leave_bytes: int = 0) -> None:
    """Write a filler file until at most ``leave_bytes`` are free on ``disk``."""
    info = os.statvfs(disk)
    todo = max(0, info.f_bavail * info.f_frsize - leave_bytes)
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while todo > 0 or leave_bytes == 0:
            try:
                todo -= os.write(fd, bytes(min(65536, todo) if todo > 0 else 4096))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return
    finally:
        os.close(fd)


# Pipelines a user could write: each fills what is left of the disk holding its run.
PIPELINES = textwrap.dedent(
    """
    import errno, logging

    def _fill(orch):
        with open(orch.paths.checkpoints / "huge.pt", "wb") as handle:
            try:
                while True:
                    handle.write(bytes(65536))
                    handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    def fills_and_returns(orch):
        _fill(orch)
        for i in range(50):
            orch.run_logger.info("a log line %d the full disk cannot take", i)

    def fills_and_raises(orch):
        _fill(orch)
        raise OSError(errno.ENOSPC, "checkpoint could not be saved")
    """
)


def run_cli(tmp_path: Path, output_dir: Path, entry: str) -> subprocess.CompletedProcess[str]:
    """``orchestrator-fsm run`` of a recipe writing runs into ``output_dir``, with ``entry``
    of the pipelines above."""
    recipe = write_recipe(tmp_path, telemetry={"output_dir": str(output_dir)})
    entries = tmp_path / "entries.py"
    entries.write_text(PIPELINES, encoding="utf-8")
    return cli("run", str(recipe), "--entry", f"{entries}:{entry}", cwd=tmp_path, timeout_s=120)


def assert_record_is_whole(root: Path) -> None:
    """run.json and every journal line parse, and no temporary or reserve file is left."""
    json.loads((root / "run.json").read_text(encoding="utf-8"))
    for line in (root / "lifecycle.jsonl").read_text(encoding="utf-8").splitlines():
        json.loads(line)
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def test_no_room_for_the_record_leaves_no_run_directory(small_disk: Path, tmp_path: Path) -> None:
    output_dir = small_disk / "outputs"
    output_dir.mkdir()
    fill(small_disk)
    result = run_cli(tmp_path, output_dir, "fills_and_returns")
    assert result.returncode == 1, result.stderr
    assert run_dirs(output_dir) == []
    assert "error in step 'provision'" in result.stderr
    assert "cannot write the run record (No space left on device)" in result.stderr
    assert "status: failed" in result.stdout
    assert "run directory: none" in result.stdout
    assert "Logging error" not in result.stderr


def test_a_pipeline_that_fills_the_disk_still_ends_completed(
    small_disk: Path, tmp_path: Path
) -> None:
    output_dir = small_disk / "outputs"
    result = run_cli(tmp_path, output_dir, "fills_and_returns")
    assert result.returncode == 0, result.stderr
    (root,) = run_dirs(output_dir)
    assert read_run(root).status == "completed"
    assert run_status(root) == "completed"
    assert "status: completed" in result.stdout
    assert_record_is_whole(root)
    # The log file could not take the lines: said once, in one line, not a traceback each.
    assert "Logging error" not in result.stderr
    assert "Traceback" not in result.stderr
    log_complaints = [line for line in result.stderr.splitlines() if "log file" in line]
    assert len(log_complaints) <= 1, log_complaints


@pytest.mark.slow
def test_a_pipeline_failing_on_the_full_disk_ends_failed(small_disk: Path, tmp_path: Path) -> None:
    output_dir = small_disk / "outputs"
    result = run_cli(tmp_path, output_dir, "fills_and_raises")
    assert result.returncode == 1, result.stderr
    (root,) = run_dirs(output_dir)
    run = read_run(root)
    assert run.status == "failed"
    assert run.error is not None and run.error.step == "pipeline"
    assert "checkpoint could not be saved" in run.error.message
    assert "status: failed" in result.stdout
    assert_record_is_whole(root)


@pytest.mark.slow
@pytest.mark.parametrize("leave_kib", [0, 16, 48, 80, 120, 200])
def test_a_nearly_full_disk_never_leaves_a_running_record(
    small_disk: Path, tmp_path: Path, leave_kib: int
) -> None:
    output_dir = small_disk / "outputs"
    output_dir.mkdir()
    fill(small_disk, leave_bytes=leave_kib * 1024)
    result = run_cli(tmp_path, output_dir, "fills_and_returns")
    printed = result.stdout.strip().splitlines()[-1]
    assert printed in ("status: completed", "status: failed"), result.stdout
    dirs = run_dirs(output_dir)
    if not dirs:
        assert printed == "status: failed"
        return
    (root,) = dirs
    assert f"status: {read_run(root).status}" == printed
    assert_record_is_whole(root)


def test_an_append_that_fails_part_way_leaves_the_file_as_it_was(small_disk: Path) -> None:
    journal = small_disk / "lifecycle.jsonl"
    journal.write_text('{"step": "seed"}\n', encoding="utf-8")
    fill(small_disk, leave_bytes=8192)
    with pytest.raises(OSError) as caught:
        append_whole(journal, "x" * (1024 * 1024))
    assert caught.value.errno == errno.ENOSPC
    assert journal.read_text(encoding="utf-8") == '{"step": "seed"}\n'


# -- injected ENOSPC: the same guarantees on any machine ---------------------------------


def _no_space(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_final_write_keeps_the_previous_record_and_says_so_once(
    make_config: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with RootOrchestrator(make_config()) as orch:
        assert orch.paths is not None
        root = orch.paths.root
        monkeypatch.setattr(record_module, "atomic_write_text", _no_space)
    assert orch.record is not None and orch.record.status == "completed"
    on_disk = read_run(root)
    assert on_disk.status == "running"  # the previous complete record, not half a file
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    complaints = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("orchestrator-fsm:")
    ]
    assert len(complaints) == 1, complaints
    assert "the run ended completed" in complaints[0]
    assert str(root / "run.json") in complaints[0]


def test_a_failed_first_write_removes_the_run_directory(
    make_config: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(record_module, "atomic_write_text", _no_space)
    orch = RootOrchestrator(make_config())
    with pytest.raises(OSError, match="cannot write the run record"), orch:
        pass
    assert run_dirs(tmp_path / "outputs") == []
    assert orch.paths is None and orch.record is None
    assert orch.machine.ended_in == "provision"


def test_a_failed_reserve_removes_the_run_directory(
    make_config: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(record_module, "_fill", _no_space)
    with (
        pytest.raises(OSError, match="cannot write the run record"),
        RootOrchestrator(make_config()),
    ):
        pass
    assert run_dirs(tmp_path / "outputs") == []


def test_the_reserve_is_kept_while_the_run_is_live_and_gone_after(make_config: Any) -> None:
    with RootOrchestrator(make_config()) as orch:
        assert orch.paths is not None
        reserve = orch.paths.root / RESERVE_FILE
        assert reserve.stat().st_size >= 64 * 1024
    assert not reserve.exists()


def test_the_last_record_is_written_through_the_reserve(make_config: Any) -> None:
    # The emptied reserve is the final write's temporary file: the final run.json is the
    # reserve's own file (no new one is created for it), it still gets the mode any new
    # file gets, and no hidden file is left.
    previous = os.umask(0o027)
    try:
        with RootOrchestrator(make_config()) as orch:
            assert orch.paths is not None
            root = orch.paths.root
            reserve = (root / RESERVE_FILE).stat().st_ino
    finally:
        os.umask(previous)
    assert (root / "run.json").stat().st_ino == reserve
    assert (root / "run.json").stat().st_mode & 0o777 == 0o640
    assert read_run(root).status == "completed"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


def test_a_write_through_a_file_renames_it_and_a_failed_one_removes_it(tmp_path: Path) -> None:
    spare = tmp_path / ".spare"
    spare.write_bytes(bytes(4096))
    fs_module.atomic_write_bytes(tmp_path / "a.json", b"{}", through=spare)
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    assert not spare.exists()
    # No such file: a new temporary file, as without it.
    fs_module.atomic_write_bytes(tmp_path / "a.json", b"[]", through=spare)
    assert (tmp_path / "a.json").read_bytes() == b"[]"
    spare.write_bytes(bytes(4096))
    (tmp_path / "folder").mkdir()
    with pytest.raises(OSError):  # a rename over a folder fails
        fs_module.atomic_write_bytes(tmp_path / "folder", b"{}", through=spare)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "folder"]


def test_a_failed_journal_append_is_retried_with_the_next_one(
    make_config: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = record_module.append_whole
    calls = {"n": 0}

    def flaky(path: Path, text: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text)

    monkeypatch.setattr(record_module, "append_whole", flaky)
    with RootOrchestrator(make_config()) as orch:
        assert orch.paths is not None
        root = orch.paths.root
    steps = [
        json.loads(line)["step"]
        for line in (root / "lifecycle.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert steps == [record.step for record in orch.machine.history]
    assert capsys.readouterr().err.count("could not append") == 1


def test_config_rejects_a_heartbeat_out_of_range(tmp_path: Path) -> None:
    from orchestrator_fsm.errors import ConfigError

    for bad in (-1, 0.01, 10**9, True, "often"):
        with pytest.raises(ConfigError, match=r"telemetry\.heartbeat_s"):
            Config.from_dict(minimal_recipe(tmp_path, telemetry={"heartbeat_s": bad}))
