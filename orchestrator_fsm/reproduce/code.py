"""Which code ``orchestrator-fsm rerun`` runs: the code that ran, or today's.

:func:`code_that_ran` rebuilds, for the length of a ``with`` block, the code a run ran:
its recorded commit checked out in a temporary git worktree with the recorded patch
(``reports/git_diff.patch``, the checkout's uncommitted changes) applied; where no git
checkout was recorded, the copy of the entry file the run kept (``reports/entry/``),
unless today's file is the same. It gives a :class:`CodeSource` that maps the
original's paths (the entry, the working directory) to where that code now is, and the
line ``rerun`` prints to say which code it ran. With ``current=True`` it is today's
working tree, as it is. A code that cannot be rebuilt (a commit git no longer has, a
patch cut at its size cap or that no longer applies) is a :class:`CodeUnavailable`
whose one-line message suggests ``--current``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

__all__ = ["CodeSource", "CodeUnavailable", "code_that_ran"]

_GIT_TIMEOUT_S: Final = 120.0


class CodeUnavailable(RuntimeError):
    """The code the run ran cannot be rebuilt here; the message is the one line to show."""


@attrs.frozen
class CodeSource:
    """Where the rerun's code is: ``moved`` maps a folder of the original (the checkout's
    top level, or the entry file's folder) to the folder now holding its code (``None``:
    today's tree, where it was); ``says`` is the line telling which code runs."""

    says: str
    moved: tuple[str, str] | None = None
    current: bool = True
    whole_tree: bool = True
    """Whether the working directory moves too (a worktree), not only the entry file."""

    def cwd(self, original: str) -> str:
        """Where the rerun runs, for the original's working directory ``original``."""
        return self.path(original) if self.whole_tree else original

    def python_path(self, environ: Mapping[str, str] | None = None) -> str | None:
        """``PYTHONPATH`` for the rerun: the entries of ``environ``'s (default
        ``os.environ``) in the rebuilt code, first; for a saved entry file, the
        original's folder, so that what it imports is found. ``None``: unchanged."""
        env: Mapping[str, str] = os.environ if environ is None else environ
        given = [part for part in env.get("PYTHONPATH", "").split(os.pathsep) if part]
        if self.moved is None:
            return None
        if not self.whole_tree:
            return os.pathsep.join([*given, self.moved[0]])
        moved = [self.path(os.path.abspath(part)) for part in given]
        return os.pathsep.join(dict.fromkeys(moved)) or None

    def path(self, original: str) -> str:
        """Where ``original`` (a file or folder of the original run) is in this code."""
        if self.moved is None:
            return original
        before, after = self.moved
        relative = os.path.relpath(original, before)
        if relative == os.pardir or relative.startswith(os.pardir + os.sep):
            return original
        return os.path.normpath(os.path.join(after, relative))

    def original(self, path: str) -> str:
        """The original run's name for ``path`` in this code (the inverse of :meth:`path`)."""
        if self.moved is None:
            return path
        return attrs.evolve(self, moved=(self.moved[1], self.moved[0])).path(path)


def _git(*args: str, cwd: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(name, None)
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=_GIT_TIMEOUT_S,
        check=False,
    )


def _short(commit: str) -> str:
    return commit[:12]


@contextlib.contextmanager
def code_that_ran(
    run_dir: Path, bundle: Mapping[str, Any], *, current: bool = False
) -> Iterator[CodeSource]:
    """Within the block, the code the run in ``run_dir`` (whose bundle is ``bundle``)
    ran, rebuilt as the module says (removed after); today's tree with ``current``.
    Raises :class:`CodeUnavailable` when it cannot be rebuilt."""
    if current:
        yield CodeSource("code: today's working tree (--current), not necessarily what ran")
        return
    git = bundle.get("git")
    git = git if isinstance(git, Mapping) else None
    commit = None if git is None else git.get("commit")
    toplevel = None if git is None else git.get("toplevel")
    if git is not None and isinstance(toplevel, str) and _is_commit(commit):
        with _worktree(run_dir, git, str(toplevel), str(commit), bundle) as source:
            yield source
        return
    with _saved_entry(run_dir, bundle) as source:
        yield source


def _is_commit(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) >= 7 and all(c in "0123456789abcdef" for c in value)
    )


@contextlib.contextmanager
def _worktree(
    run_dir: Path, git: Mapping[str, Any], toplevel: str, commit: str, bundle: Mapping[str, Any]
) -> Iterator[CodeSource]:
    """The recorded commit with the recorded patch, in a temporary worktree of the
    checkout ``toplevel``."""
    if not os.path.isdir(toplevel):
        raise CodeUnavailable(
            f"cannot rebuild the code the run ran: its checkout {toplevel} is gone; "
            "rerun with --current to run today's code"
        )
    patch: Path | None = None
    if git.get("diff_file"):
        patch = run_dir / "reports" / str(git["diff_file"])
        if git.get("diff_truncated") or not patch.is_file():
            raise CodeUnavailable(
                f"cannot rebuild the code the run ran: its uncommitted changes ({patch}) "
                "were not kept whole; rerun with --current to run today's code"
            )
    scratch = tempfile.mkdtemp(prefix="orchestrator-fsm-code-")
    tree = os.path.join(scratch, Path(toplevel).name)
    added = _git("worktree", "add", "--detach", "--quiet", tree, commit, cwd=toplevel)
    try:
        if added.returncode != 0:
            raise CodeUnavailable(
                f"cannot check out commit {_short(commit)} of {toplevel} "
                f"({' '.join(added.stderr.split()) or 'git failed'}); rerun with --current "
                "to run today's code"
            )
        says = f"code: commit {_short(commit)}"
        if patch is not None:
            applied = _git("apply", "--whitespace=nowarn", str(patch), cwd=tree)
            if applied.returncode != 0:
                raise CodeUnavailable(
                    f"cannot apply the run's uncommitted changes {patch} to commit "
                    f"{_short(commit)} ({' '.join(applied.stderr.split())}); rerun with "
                    "--current to run today's code"
                )
            says += f" + its recorded patch ({patch.stat().st_size} bytes)"
        source = CodeSource(
            f"{says}, in a temporary worktree {tree} (--current runs today's tree)",
            (toplevel, tree),
            current=False,
        )
        _restore_untracked_entry(run_dir, bundle, source)
        yield source
    finally:
        _git("worktree", "remove", "--force", tree, cwd=toplevel)
        shutil.rmtree(scratch, ignore_errors=True)
        _git("worktree", "prune", cwd=toplevel)


def _restore_untracked_entry(run_dir: Path, bundle: Mapping[str, Any], source: CodeSource) -> None:
    """An entry file git did not track (so neither commit nor patch holds it): its
    saved copy, put where it was."""
    entry = bundle.get("entry")
    if not isinstance(entry, Mapping) or not entry.get("path") or not entry.get("saved"):
        return
    target = Path(source.path(str(entry["path"])))
    saved = run_dir / str(entry["saved"])
    if not target.exists() and saved.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(saved, target)


@contextlib.contextmanager
def _saved_entry(run_dir: Path, bundle: Mapping[str, Any]) -> Iterator[CodeSource]:
    """No checkout recorded: the entry file's saved copy, where today's differs."""
    from orchestrator_fsm.phases.bundle import sha256_file

    entry = bundle.get("entry")
    entry = entry if isinstance(entry, Mapping) else {}
    path, saved = entry.get("path"), entry.get("saved")
    if not isinstance(path, str):
        yield CodeSource("code: today's (the run recorded no git checkout and no entry file)")
        return
    if sha256_file(Path(path)) == entry.get("sha256"):
        yield CodeSource(
            f"code: today's {path}, unchanged since the run (no git checkout was recorded: "
            "what it imports is today's)"
        )
        return
    copy = run_dir / str(saved) if isinstance(saved, str) else None
    if copy is None or not copy.is_file():
        raise CodeUnavailable(
            f"cannot rebuild the code the run ran: {path} changed since, no git checkout "
            "was recorded and no copy kept; rerun with --current to run today's code"
        )
    folder = tempfile.mkdtemp(prefix="orchestrator-fsm-code-")
    try:
        shutil.copyfile(copy, os.path.join(folder, Path(path).name))
        yield CodeSource(
            f"code: the run's saved copy of {path} ({copy}; no git checkout was recorded: "
            "what it imports is today's; --current runs today's file)",
            (str(Path(path).parent), folder),
            current=False,
            whole_tree=False,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
