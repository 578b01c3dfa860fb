"""``rerun`` runs the code that ran: the recorded commit with the recorded patch in a
temporary git worktree (by default), or today's tree with ``--current``; what it says
names which. Real git repositories in ``tmp_path``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import cli, isolated, only_run_dir, run_dirs

from orchestrator_fsm.layout import METRICS_FILE

GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]

SCRIPT = """\
import helper
from orchestrator_fsm import current_run

current_run().log_metrics({"value": helper.VALUE}, step=1)
"""


def git(repo: Path, *args: str) -> str:
    done = subprocess.run([*GIT, *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def repo_with_script(tmp_path: Path, value: int) -> Path:
    """A git repository holding ``train.py`` and the ``helper.py`` it imports (one commit)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train.py").write_text(SCRIPT, encoding="utf-8")
    set_value(repo, value)
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    return repo


def set_value(repo: Path, value: int) -> None:
    (repo / "helper.py").write_text(f"VALUE = {value}\n", encoding="utf-8")


def values(run: Path) -> list[float]:
    lines = (run / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["value"] for line in lines]


def run_script(repo: Path, tmp_path: Path) -> Path:
    result = cli("run", "--script", "train.py", *isolated(tmp_path), cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    return only_run_dir(tmp_path / "outputs")


def newest_other(tmp_path: Path, *known: Path) -> Path:
    found = [run for run in run_dirs(tmp_path / "outputs") if run not in known]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_rerun_runs_the_recorded_commit_and_current_runs_todays_code(tmp_path: Path) -> None:
    repo = repo_with_script(tmp_path, 2)
    commit = git(repo, "rev-parse", "HEAD")
    original = run_script(repo, tmp_path)
    set_value(repo, 3)
    git(repo, "commit", "-qam", "second")

    rerun = cli("rerun", str(original), cwd=repo)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "drift: none" in rerun.stdout
    assert f"code: commit {commit[:12]}, in a temporary worktree" in rerun.stdout
    assert rerun.stdout.strip().endswith("identical")
    as_it_ran = newest_other(tmp_path, original)
    assert values(as_it_ran) == [2]
    # The temporary worktree is gone, and git no longer lists it.
    assert git(repo, "worktree", "list").count("\n") == 0

    current = cli("rerun", str(original), "--current", cwd=repo)
    assert current.returncode == 4, current.stdout + current.stderr
    assert "code: today's working tree (--current)" in current.stdout
    assert any(line.split()[:2] == ["git", "commit"] for line in current.stdout.splitlines())
    assert values(newest_other(tmp_path, original, as_it_ran)) == [3]


@pytest.mark.slow
def test_rerun_of_a_dirty_checkout_applies_its_recorded_patch(tmp_path: Path) -> None:
    repo = repo_with_script(tmp_path, 2)
    set_value(repo, 7)  # not committed: the run records it as its patch
    original = run_script(repo, tmp_path)
    assert values(original) == [7]
    git(repo, "checkout", "--", "helper.py")

    rerun = cli("rerun", str(original), cwd=repo)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "+ its recorded patch (" in rerun.stdout
    assert rerun.stdout.strip().endswith("identical")
    assert values(newest_other(tmp_path, original)) == [7]
    assert (repo / "helper.py").read_text(encoding="utf-8") == "VALUE = 2\n"  # untouched


@pytest.mark.slow
def test_a_commit_git_no_longer_has_is_one_line_suggesting_current(tmp_path: Path) -> None:
    repo = repo_with_script(tmp_path, 2)
    original = run_script(repo, tmp_path)
    bundle_path = original / "reports" / "rerun.json"
    bundle = json.loads(bundle_path.read_text(encoding="utf-8"))
    bundle["git"]["commit"] = "0" * 40
    bundle_path.write_text(json.dumps(bundle), encoding="utf-8")
    result = cli("rerun", str(original), cwd=repo)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot check out commit 000000000000" in lines[0]
    assert "rerun with --current" in lines[0]
