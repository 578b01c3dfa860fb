from __future__ import annotations

import enum
import itertools
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from orchestrator_fsm import git_state
from orchestrator_fsm._system import distribution_version, record_invocation
from orchestrator_fsm.git_state import GIT_DIFF_CAP_BYTES
from orchestrator_fsm.layout import GIT_DIFF_FILE
from orchestrator_fsm.phases import manifest
from orchestrator_fsm.phases.manifest import AuditSaver

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


class Colour(enum.Enum):
    RED = "red"


class _Serializable:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def dump_serialized(self) -> Mapping[str, Any]:
        return self.data


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_saved_config_redacts_secret_keys_and_url_passwords(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    data: dict[str, Any] = {
        "dataset": {"name": "mnist", "url": "https://alice:pa55word@data.example.com/x.tar"},
        "tracking": {"api_key": "sk-live-123", "Auth-Token": "abc", "password": None},
        "training": {"seed": 1},
    }

    AuditSaver().save_config(data, target)

    text = target.read_text(encoding="utf-8")
    assert "pa55word" not in text and "sk-live-123" not in text and "abc\n" not in text
    loaded = _load(target)
    assert loaded["dataset"]["url"] == "https://alice:***@data.example.com/x.tar"
    assert loaded["tracking"] == {"api_key": "***", "Auth-Token": "***", "password": None}
    assert data["tracking"]["api_key"] == "sk-live-123"  # the caller's data is not changed


def test_saved_config_keeps_key_order_and_unicode(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    data = {"zeta": 1, "alpha": {"name": "données", "b": 2, "a": 1}, "mid": [1, 2]}

    AuditSaver().save_config(data, target)

    loaded = _load(target)
    assert loaded == data
    assert list(loaded) == ["zeta", "alpha", "mid"]
    assert list(loaded["alpha"]) == ["name", "b", "a"]
    assert "données" in target.read_text(encoding="utf-8")


def test_save_config_uses_dump_serialized_when_the_object_has_it(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"

    AuditSaver().save_config(_Serializable({"training": {"seed": 7}}), target)

    assert _load(target) == {"training": {"seed": 7}}


def test_paths_enums_and_tuples_are_written_as_plain_data(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"

    AuditSaver().save_config(
        {"out": Path("/runs/x"), "colour": Colour.RED, "shape": (1, 2)}, target
    )

    assert _load(target) == {"out": "/runs/x", "colour": "red", "shape": [1, 2]}


def test_non_plain_value_is_rejected_naming_its_path(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"

    with pytest.raises(TypeError, match=r"model\.layers\[1\]") as caught:
        AuditSaver().save_config({"model": {"layers": [1, object()]}}, target)

    assert "object" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_save_config_rejects_data_that_is_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="mapping"):
        AuditSaver().save_config([1, 2], tmp_path / "config.yaml")  # type: ignore[arg-type]


def test_save_config_returns_the_path_it_wrote(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "config.yaml"
    target.parent.mkdir()

    written = AuditSaver().save_config({"training": {"seed": 3}}, str(target))  # type: ignore[arg-type]

    assert written == target  # a Path, though a str was passed
    assert _load(written) == {"training": {"seed": 3}}


def test_save_config_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("old: true\n")

    AuditSaver().save_config({"new": True}, target)

    assert _load(target) == {"new": True}
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def _fake_distribution(
    site: Path, name: str, version: str, direct_url: Mapping[str, Any] | None = None
) -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url), encoding="utf-8")


def _requirement_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line[:1] != "#"]


def test_requirements_start_with_the_python_version_line(tmp_path: Path) -> None:
    target = tmp_path / "requirements.txt"

    AuditSaver().dump_requirements(target)

    lines = target.read_text(encoding="utf-8").splitlines()
    assert lines[0] == f"# Python {platform.python_version()}"
    header = list(itertools.takewhile(lambda line: line.startswith("#"), lines))
    assert len(header) > 1
    assert all(line.startswith("# ") for line in header)
    assert any(platform.system() in line for line in header[1:])
    assert f"numpy=={np.__version__}" in _requirement_lines(target)
    assert [p.name for p in tmp_path.iterdir()] == ["requirements.txt"]


def test_requirements_are_sorted_case_insensitively_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    later, earlier = tmp_path / "later", tmp_path / "earlier"
    _fake_distribution(later, "Dup.Pkg", "2.0")
    _fake_distribution(earlier, "dup_pkg", "1.0")
    _fake_distribution(earlier, "AAA-first", "0.1")
    monkeypatch.syspath_prepend(str(later))
    monkeypatch.syspath_prepend(str(earlier))
    target = tmp_path / "requirements.txt"

    AuditSaver().dump_requirements(target)

    lines = _requirement_lines(target)
    names = [line.split("==")[0] for line in lines]
    assert names == sorted(names, key=str.lower)
    normalized = [re.sub(r"[-_.]+", "-", n).lower() for n in names]
    assert len(normalized) == len(set(normalized))
    assert "dup_pkg==1.0" in lines  # the first on sys.path wins, as for imports
    assert "Dup.Pkg==2.0" not in lines
    assert "AAA-first==0.1" in lines


def test_direct_url_installs_are_marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    _fake_distribution(
        site,
        "fake-editable",
        "2.0",
        {"url": "file:///src/fake-editable", "dir_info": {"editable": True}},
    )
    _fake_distribution(site, "fake-local", "1.1", {"url": "file:///src/l", "dir_info": {}})
    _fake_distribution(
        site,
        "fake-vcs",
        "0.3",
        {
            "url": "https://bob:s3cret@git.example.com/fake.git",
            "vcs_info": {"vcs": "git", "commit_id": "0123abcd"},
        },
    )
    _fake_distribution(
        site,
        "fake-archive",
        "4.0",
        {"url": "https://example.com/fake.whl", "archive_info": {"hash": "sha256=00"}},
    )
    _fake_distribution(site, "fake-broken-url", "5.0")
    (site / "fake_broken_url-5.0.dist-info" / "direct_url.json").write_text("{not json")
    monkeypatch.syspath_prepend(str(site))
    target = tmp_path / "requirements.txt"

    AuditSaver().dump_requirements(target)

    lines = _requirement_lines(target)
    assert "fake-editable==2.0  # editable: file:///src/fake-editable" in lines
    assert "fake-local==1.1  # local: file:///src/l" in lines
    assert "fake-vcs==0.3  # vcs: git+https://bob:***@git.example.com/fake.git@0123abcd" in lines
    assert "fake-archive==4.0  # archive: https://example.com/fake.whl" in lines
    assert "fake-broken-url==5.0" in lines
    assert "s3cret" not in target.read_text(encoding="utf-8")


def test_requirement_names_and_versions_match_importlib_metadata(tmp_path: Path) -> None:
    target = tmp_path / "requirements.txt"

    AuditSaver().dump_requirements(target)

    listed = {line.split("  # ")[0] for line in _requirement_lines(target)}
    expected: dict[str, str] = {}
    for dist in importlib_metadata.distributions():
        key = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        expected.setdefault(key, f"{dist.metadata['Name']}=={dist.version}")
    assert listed == set(expected.values())


def test_one_distributions_version_matches_importlib_metadata() -> None:
    distribution_version.cache_clear()
    for dist in importlib_metadata.distributions():
        name = dist.metadata["Name"]
        assert distribution_version(name) == importlib_metadata.version(name), name
    assert distribution_version("surely-not-installed-here") is None


def test_a_distribution_installed_between_two_runs_is_listed_by_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    _fake_distribution(site, "first-pkg", "1.0")
    monkeypatch.syspath_prepend(str(site))
    # Settled folders, as an install minutes ago leaves them: the listing is kept.
    for folder in (*(Path(entry or os.curdir) for entry in sys.path), site):
        if folder.is_dir() and folder.stat().st_mtime > time.time() - 10:
            os.utime(folder, (time.time() - 3600,) * 2)
    before, kept, after, removed = (
        tmp_path / name for name in ("before", "kept", "after", "removed")
    )

    AuditSaver().dump_requirements(before)
    # While no sys.path folder changes, the listing is kept: a version edited in place
    # (no folder's time moves) is not read again.
    metadata_file = site / "first_pkg-1.0.dist-info" / "METADATA"
    metadata_file.write_text(metadata_file.read_text().replace("1.0", "1.5"), encoding="utf-8")
    AuditSaver().dump_requirements(kept)
    metadata_file.write_text(metadata_file.read_text().replace("1.5", "1.0"), encoding="utf-8")
    _fake_distribution(site, "second-pkg", "2.0")
    AuditSaver().dump_requirements(after)
    shutil.rmtree(site / "first_pkg-1.0.dist-info")
    AuditSaver().dump_requirements(removed)

    assert "first-pkg==1.0" in _requirement_lines(before)
    assert "second-pkg==2.0" not in _requirement_lines(before)
    assert _requirement_lines(kept) == _requirement_lines(before)
    assert {"first-pkg==1.0", "second-pkg==2.0"} <= set(_requirement_lines(after))
    assert "first-pkg==1.0" not in _requirement_lines(removed)
    assert "second-pkg==2.0" in _requirement_lines(removed)


def test_a_file_made_beside_the_distributions_keeps_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A project folder or /tmp on sys.path changes all the time; only a distribution
    # folder that appears or leaves makes the listing be read again.
    site = tmp_path / "site"
    _fake_distribution(site, "third-pkg", "1.0")
    monkeypatch.syspath_prepend(str(site))
    for folder in (*(Path(entry or os.curdir) for entry in sys.path), site):
        if folder.is_dir() and folder.stat().st_mtime > time.time() - 10:
            os.utime(folder, (time.time() - 3600,) * 2)
    first, second = tmp_path / "first", tmp_path / "second"

    AuditSaver().dump_requirements(first)
    metadata_file = site / "third_pkg-1.0.dist-info" / "METADATA"
    metadata_file.write_text(metadata_file.read_text().replace("1.0", "1.5"), encoding="utf-8")
    (site / "notes.txt").write_text("not a distribution\n", encoding="utf-8")
    AuditSaver().dump_requirements(second)

    assert "third-pkg==1.0" in _requirement_lines(first)
    assert _requirement_lines(second) == _requirement_lines(first)


def test_metadata_header_fields_are_read_up_to_the_first_blank_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "site" / "odd_pkg-3.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: Odd-Pkg\nVersion: 3.1\nSummary: x\n\n"
        "Name: not-this\nVersion: 9.9\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    target = tmp_path / "requirements.txt"

    AuditSaver().dump_requirements(target)

    lines = _requirement_lines(target)
    assert "Odd-Pkg==3.1" in lines
    assert not any(line.startswith("not-this") for line in lines)


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Git isolated from the user's and the system's configuration."""
    empty = tmp_path / "empty.gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for key in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(key, raising=False)
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, check=True, text=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, git_env: None, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git checkout with one commit on ``main``, and the working directory inside it."""
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    (path / "train.py").write_text("print('hello')\n")
    _git(path, "add", "train.py")
    _git(path, "commit", "-q", "-m", "first")
    monkeypatch.chdir(path)
    return path


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    path = tmp_path / "reports"
    path.mkdir()
    return path


def _record_git_info(reports: Path) -> dict[str, str]:
    """Run dump_git_info into ``reports`` and parse the git_info.txt it wrote."""
    AuditSaver().dump_git_info(reports / "git_info.txt")
    lines = (reports / "git_info.txt").read_text(encoding="utf-8").splitlines()
    return dict(line.split(": ", 1) for line in lines)


@needs_git
def test_git_info_of_a_clean_checkout(repo: Path, reports: Path) -> None:
    info = _record_git_info(reports)
    assert info["commit"] == _git(repo, "rev-parse", "HEAD")
    assert info["branch"] == "main"
    assert info["dirty"] == "false"
    assert info["untracked_files"] == "0"
    assert info["remote"] == "none"
    assert Path(info["toplevel"]).resolve() == repo.resolve()
    # A clean tree has nothing to patch: no empty git_diff.patch.
    assert sorted(p.name for p in reports.iterdir()) == ["git_info.txt"]


@needs_git
def test_a_patch_left_by_an_earlier_attempt_goes_when_the_tree_is_clean_again(
    repo: Path, reports: Path
) -> None:
    (repo / "train.py").write_text("print('changed')\n")
    _record_git_info(reports)
    assert (reports / GIT_DIFF_FILE).stat().st_size > 0
    _git(repo, "checkout", "--", "train.py")
    assert _record_git_info(reports)["dirty"] == "false"
    assert not (reports / GIT_DIFF_FILE).exists()


@needs_git
def test_modified_checkout_is_dirty_and_its_diff_is_saved(repo: Path, reports: Path) -> None:
    (repo / "train.py").write_text("print('changed')\n")
    assert _record_git_info(reports)["dirty"] == "true"
    patch = (reports / GIT_DIFF_FILE).read_text(encoding="utf-8")
    assert "-print('hello')" in patch and "+print('changed')" in patch


@needs_git
def test_untracked_files_are_counted_but_do_not_make_the_checkout_dirty(
    repo: Path, reports: Path
) -> None:
    (repo / "notes.txt").write_text("scratch")
    info = _record_git_info(reports)
    assert info["dirty"] == "false"
    assert info["untracked_files"] == "1"


@needs_git
def test_remote_url_password_is_redacted(repo: Path, reports: Path) -> None:
    _git(repo, "remote", "add", "origin", "https://bob:s3cret@git.example.com/r.git")
    info = _record_git_info(reports)

    assert info["remote"] == "origin https://bob:***@git.example.com/r.git"
    assert "s3cret" not in (reports / "git_info.txt").read_text(encoding="utf-8")


@needs_git
def test_origin_is_preferred_and_otherwise_the_first_remote_git_lists(
    repo: Path, reports: Path
) -> None:
    _git(repo, "remote", "add", "zeta", "https://z.example/r.git")
    _git(repo, "remote", "add", "alpha", "https://a.example/r.git")
    assert _record_git_info(reports)["remote"] == "alpha https://a.example/r.git"
    _git(repo, "remote", "add", "origin", "https://o.example/r.git")
    assert _record_git_info(reports)["remote"] == "origin https://o.example/r.git"


@needs_git
def test_the_remote_url_is_recorded_as_git_resolves_it(repo: Path, reports: Path) -> None:
    _git(repo, "config", "url.https://rewritten.example/.insteadOf", "gh:")
    _git(repo, "remote", "add", "origin", "gh:me/project")
    resolved = _git(repo, "remote", "get-url", "origin")
    assert resolved == "https://rewritten.example/me/project"
    assert _record_git_info(reports)["remote"] == f"origin {resolved}"


@needs_git
def test_staged_renames_and_merge_conflicts_make_the_checkout_dirty(
    repo: Path, reports: Path
) -> None:
    _git(repo, "mv", "train.py", "fit.py")
    assert _record_git_info(reports)["dirty"] == "true"
    _git(repo, "commit", "-q", "-m", "rename")
    _git(repo, "checkout", "-q", "-b", "other")
    (repo / "fit.py").write_text("print('other')\n")
    _git(repo, "commit", "-q", "-am", "other")
    _git(repo, "checkout", "-q", "main")
    (repo / "fit.py").write_text("print('main')\n")
    _git(repo, "commit", "-q", "-am", "main")
    merged = subprocess.run(["git", "merge", "-q", "other"], cwd=repo, capture_output=True)
    assert merged.returncode != 0  # a conflict, left in the working tree
    info = _record_git_info(reports)
    assert info["dirty"] == "true"
    assert info["branch"] == "main"
    assert info["commit"] == _git(repo, "rev-parse", "HEAD")


@needs_git
def test_detached_head_is_named(repo: Path, reports: Path) -> None:
    _git(repo, "checkout", "-q", "--detach")
    assert _record_git_info(reports)["branch"] == "(detached HEAD)"


@needs_git
def test_checkout_without_commits_records_no_commit_and_no_diff(
    tmp_path: Path, reports: Path, git_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_repo = tmp_path / "fresh"
    empty_repo.mkdir()
    _git(empty_repo, "init", "-q", "-b", "trunk")
    monkeypatch.chdir(empty_repo)
    info = _record_git_info(reports)
    assert info["commit"] == "none (no commits yet)"
    assert info["branch"] == "trunk"
    assert not (reports / GIT_DIFF_FILE).exists()


@needs_git
def test_large_diff_is_cut_at_one_mebibyte_with_a_note(repo: Path, reports: Path) -> None:
    big = "".join(f"line {i} of a long generated file\n" for i in range(60_000))
    (repo / "train.py").write_text(big)
    full = subprocess.run(
        ["git", "diff", "HEAD", "--no-color", "--no-ext-diff"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    assert len(full) > GIT_DIFF_CAP_BYTES
    AuditSaver().dump_git_info(reports / "git_info.txt")

    patch = (reports / GIT_DIFF_FILE).read_bytes()
    kept, note = patch[:-1].rsplit(b"\n", 1)
    kept += b"\n"
    assert note.startswith(b"# orchestrator-fsm: diff truncated")
    assert len(kept) <= GIT_DIFF_CAP_BYTES
    assert full.startswith(kept)
    assert len(kept) > GIT_DIFF_CAP_BYTES - 200  # cut at the last whole line, not earlier


@needs_git
def test_outside_a_checkout_nothing_is_written(
    tmp_path: Path, reports: Path, git_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    AuditSaver().dump_git_info(reports / "git_info.txt")

    assert list(reports.iterdir()) == []


@needs_git
def test_without_git_on_path_nothing_is_written_or_raised(
    repo: Path, tmp_path: Path, reports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_tools = tmp_path / "no-tools"
    no_tools.mkdir()
    monkeypatch.setenv("PATH", str(no_tools))
    AuditSaver().dump_git_info(reports / "git_info.txt")

    assert list(reports.iterdir()) == []


@needs_git
def test_a_git_that_hangs_is_killed_and_its_part_recorded_as_unknown(
    repo: Path,
    tmp_path: Path,
    reports: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real_git = shutil.which("git")
    tools = tmp_path / "tools"
    tools.mkdir()
    fake = tools / "git"
    fake.write_text(
        f'#!/bin/sh\nif [ "$1" = status ]; then exec sleep 60; fi\nexec {real_git} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(git_state, "_GIT_TIMEOUT_S", 0.5)

    with caplog.at_level(logging.WARNING, logger="orchestrator_fsm.run.manifest"):
        info = _record_git_info(reports)

    assert info["dirty"] == "unknown"
    assert info["untracked_files"] == "unknown"
    assert info["commit"] == _git(repo, "rev-parse", "HEAD")  # from the fallback
    assert info["branch"] == "main"
    assert any("took longer than" in r.getMessage() for r in caplog.records)


def test_invocation_record_describes_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["-c", "--flag"])

    record = record_invocation()

    assert record["argv"] == ["-c", "--flag"]
    assert record["cwd"] == os.getcwd()
    assert record["entry_point"] is None
    assert record["python"] == platform.python_version()
    assert record["python_executable"] == sys.executable
    json.dumps(record)  # plain data, ready for run.json


PROBE = """\
import json
from orchestrator_fsm._system import record_invocation
print(json.dumps(record_invocation()))
"""


def _probe(tmp_path: Path, *args: str) -> dict[str, Any]:
    (tmp_path / "probe_invocation.py").write_text(PROBE)
    done = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, capture_output=True, check=True, text=True
    )
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def test_invocation_with_dash_m_names_the_module(tmp_path: Path) -> None:
    record = _probe(tmp_path, "-m", "probe_invocation", "--epochs", "3")

    assert record["entry_module"] == "probe_invocation"
    assert record["entry_point"] == str((tmp_path / "probe_invocation.py").resolve())
    assert record["argv"][1:] == ["--epochs", "3"]
    assert Path(record["cwd"]).resolve() == tmp_path.resolve()


def test_invocation_of_a_script_resolves_its_path(tmp_path: Path) -> None:
    record = _probe(tmp_path, "probe_invocation.py")

    assert record["entry_module"] is None
    assert record["entry_point"] == str((tmp_path / "probe_invocation.py").resolve())


@needs_git
def test_the_git_state_is_one_value_written_kept_and_read_back_alike(
    repo: Path, reports: Path
) -> None:
    (repo / "train.py").write_text("print('changed')\n")
    (repo / "notes.txt").write_text("untracked\n")
    state = AuditSaver().dump_git_info(reports / "git_info.txt")

    assert state is not None
    assert state.commit == _git(repo, "rev-parse", "HEAD")
    assert state.branch == "main"
    assert state.dirty is True
    assert state.untracked_files == 1
    # The file is the value's text, and reading the run back gives the same value.
    assert (reports / "git_info.txt").read_text(encoding="utf-8") == state.info_text()
    assert (reports / GIT_DIFF_FILE).read_bytes() == state.patch
    assert git_state.read_recorded_git_state(reports) == state
    assert state.source_tags() == {
        "mlflow.source.git.commit": state.commit,
        "mlflow.source.git.branch": "main",
    }


@needs_git
def test_the_top_level_is_found_from_a_subfolder_as_git_finds_it(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nested = repo / "src" / "pkg"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    state = git_state.read_git_state()
    assert state is not None
    assert state.toplevel == _git(nested, "rev-parse", "--show-toplevel")


@needs_git
def test_outside_a_checkout_no_git_process_is_started(
    tmp_path: Path, git_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.chdir(plain)
    if any((folder / ".git").exists() for folder in [plain, *plain.parents]):
        pytest.skip("the temporary folder is inside a git checkout here")

    def no_git(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"git was started: {args}")

    monkeypatch.setattr(git_state, "_git_start", no_git)
    assert git_state.read_git_state() is None


@needs_git
def test_inside_the_git_folder_nothing_is_recorded(
    repo: Path, reports: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # .git is found on the way up, yet git says this is no work tree.
    monkeypatch.chdir(repo / ".git")
    assert AuditSaver().dump_git_info(reports / "git_info.txt") is None
    assert list(reports.iterdir()) == []


def test_a_git_info_file_of_another_writer_reads_as_far_as_it_goes() -> None:
    state = git_state.GitState.from_info({"commit": "abc123", "branch": "(detached HEAD)"})
    assert state.commit == "abc123"
    assert state.branch is None
    assert state.dirty is None
    assert state.as_info()["dirty"] == "unknown"
    assert state.source_tags() == {"mlflow.source.git.commit": "abc123"}


def test_the_redacted_config_is_what_config_yaml_holds(tmp_path: Path) -> None:
    data = {
        "db": {"url": "postgresql://alice:s3cret@db/x", "password": "hunter2"},
        "notes": "ünïcödé " * 30 + '\t tabbed \\ and "quoted" ' * 10,
        "path": Path("/data/set"),
        "layers": (1, 2.5, None, True),
    }
    target = tmp_path / "config.yaml"
    manifest.AuditSaver().save_config(data, target)
    assert yaml.safe_load(target.read_text(encoding="utf-8")) == manifest.redacted_config(data)
    assert manifest.redacted_config(data)["db"] == {
        "url": "postgresql://alice:***@db/x",
        "password": "***",
    }


@needs_git
def test_the_bundle_and_the_report_take_the_git_state_phase_5_recorded(
    repo: Path, make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator_fsm import RootOrchestrator
    from orchestrator_fsm.phases import report

    def no_reading(*args: object) -> None:
        raise AssertionError("git_info.txt was read back")

    # Neither the bundle nor the report reads back the file phase 5 just wrote.
    monkeypatch.setattr(manifest, "read_recorded_git_state", no_reading)
    monkeypatch.setattr(report, "read_git_info", no_reading)
    (repo / "train.py").write_text("print('changed')\n")
    with RootOrchestrator(make_config()) as orch:
        orch.log_environment_report()
    reports = orch.paths.reports
    recorded = git_state.read_recorded_git_state(reports)
    assert recorded is not None
    bundle = json.loads((reports / "rerun.json").read_text(encoding="utf-8"))
    assert bundle["git"] == recorded.bundle_record()
    assert bundle["git"]["dirty"] == "true"
    environment = json.loads((reports / "environment.json").read_text(encoding="utf-8"))
    assert environment["git"] == recorded.as_info()
