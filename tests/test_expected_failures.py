"""Every expected failure of ``orchestrator-fsm run`` is one line on stderr, plus at
most a line naming the file that holds its traceback; never a traceback on screen."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import cli, cli_command, wait_for, write_recipe

OK_ENTRY = "def main(orch):\n    pass\n"
HOLDING_ENTRY = """
import pathlib, time

def main(orch):
    pathlib.Path({marker!r}).write_text("holding")
    time.sleep(60)
"""


def said(stderr: str) -> list[str]:
    """stderr less the run's log lines: what the command itself said."""
    return [line for line in stderr.splitlines() if not line.startswith("[rank")]


def assert_one_line_and_a_pointer(result: subprocess.CompletedProcess[str], first: str) -> None:
    assert "Traceback" not in result.stderr
    lines = said(result.stderr)
    assert len(lines) in (1, 2), lines
    assert lines[0].startswith(first), lines
    (log,) = re.findall(r"the traceback is in (\S+?)\)?$", lines[-1])
    assert "Traceback (most recent call last)" in Path(log).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("override", "first"),
    [
        ("hardware.device=cuda:63", "error in step 'resolve_device': DeviceError: "),
        (
            "infrastructure.lock.path=/proc/no-such-dir/run.lock",
            "error in step 'acquire_lock': InfrastructureError: ",
        ),
    ],
    ids=["a missing device", "a bad lock path"],
)
def test_a_failed_step_is_one_line_and_names_the_log_with_the_traceback(
    tmp_path: Path, override: str, first: str
) -> None:
    recipe = write_recipe(tmp_path)
    (tmp_path / "ok.py").write_text(OK_ENTRY, encoding="utf-8")
    result = cli("run", str(recipe), "--entry", "ok.py:main", override, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert_one_line_and_a_pointer(result, first)


def test_a_bad_entry_is_one_line(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    result = cli("run", str(recipe), "--entry", "missing.py:main", cwd=tmp_path)
    assert result.returncode == 2
    assert said(result.stderr) == [
        f"error: entry file not found: 'missing.py' (looked for {tmp_path / 'missing.py'})"
    ]


@pytest.mark.slow
def test_a_refused_launch_is_one_line_naming_the_log(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, infrastructure={"lock": {"timeout_s": 0}})
    marker = tmp_path / "holding"
    (tmp_path / "hold.py").write_text(HOLDING_ENTRY.format(marker=str(marker)), encoding="utf-8")
    (tmp_path / "ok.py").write_text(OK_ENTRY, encoding="utf-8")
    holder = subprocess.Popen(
        cli_command("run", str(recipe), "--entry", "hold.py:main"),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        wait_for(lambda: [marker] if marker.exists() else [], holder)
        result = cli("run", str(recipe), "--entry", "ok.py:main", cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1, result.stderr
    assert_one_line_and_a_pointer(result, "refused in step 'acquire_lock': LockContendedError: ")


def test_a_failure_before_the_run_directory_names_a_file_in_the_cache(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path)
    (tmp_path / "ok.py").write_text(OK_ENTRY, encoding="utf-8")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = cli(
        "run",
        str(recipe),
        "--entry",
        "ok.py:main",
        "telemetry.output_dir=/proc/no-such-dir/outputs",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert_one_line_and_a_pointer(result, "error in step 'provision': ")
    assert f"{tmp_path / 'cache' / 'orchestrator-fsm' / 'last-failure.log'}" in result.stderr
