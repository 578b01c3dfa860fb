"""The git state of a working directory, read once, as a value.

:func:`read_git_state` asks ``git`` about the checkout a directory is in and returns a
frozen :class:`GitState` (commit, branch, dirty flag, untracked count, remote, the
checkout's top level and ``git diff HEAD``, capped). Everything that records or shows
the state works from that value: the manifest writes ``git_info.txt`` and
``git_diff.patch`` from it (:meth:`GitState.info_text`, :attr:`GitState.patch`), the
rerun bundle keeps :meth:`GitState.bundle_record`, the environment report shows
:meth:`GitState.as_info`, and the MLflow observer tags :meth:`GitState.source_tags`.

:func:`read_git_info` is the one reader of a ``git_info.txt`` already on disk (a run
made earlier, or a file an injected audit saver wrote); :func:`read_recorded_git_state`
turns it and the patch beside it into the same value.
"""

from __future__ import annotations

import hashlib
import logging
import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from orchestrator_fsm.layout import GIT_DIFF_FILE, GIT_INFO_FILE
from orchestrator_fsm.redaction import redact_url

__all__ = [
    "GIT_DIFF_CAP_BYTES",
    "GIT_DIFF_TRUNCATED_MARK",
    "GitState",
    "PendingGitState",
    "read_git_info",
    "read_git_state",
    "read_recorded_git_state",
    "start_git_read",
]

#: Beside ``git_info.txt``: ``git diff HEAD`` of a checkout with changes.
GIT_DIFF_CAP_BYTES: Final = 1024 * 1024
"""The most bytes of ``git diff HEAD`` kept in ``git_diff.patch``."""
GIT_DIFF_TRUNCATED_MARK: Final = b"# orchestrator-fsm: diff truncated"
"""How the note line a cut ``git_diff.patch`` ends with begins."""

_GIT_TIMEOUT_S: Final = 15.0
_READ_CHUNK: Final = 64 * 1024
# Variables with which git finds a repository other than by walking up from the
# working directory: with any of them set, only git itself can say.
_GIT_LOCATION_VARS: Final = ("GIT_DIR", "GIT_WORK_TREE")
# What git_info.txt says where a value is unknown or absent.
_NO_COMMIT: Final = "none (no commits yet)"
_DETACHED: Final = "(detached HEAD)"
_UNKNOWN: Final = "unknown"
_NO_REMOTE: Final = "none"
_MLFLOW_TAGS: Final = {"commit": "mlflow.source.git.commit", "branch": "mlflow.source.git.branch"}

_log = logging.getLogger("orchestrator_fsm.run.manifest")


@attrs.frozen
class GitState:
    """What git says of a checkout at one moment.

    ``None`` means unknown or absent: ``commit`` before the first commit, ``branch``
    on a detached HEAD, ``dirty`` and ``untracked_files`` when ``git status`` failed,
    ``remote`` without one. ``remote`` is ``"<name> <url>"`` (``origin``, else the
    first remote), its password redacted. ``patch`` is what ``git_diff.patch`` holds:
    ``git diff HEAD``, cut at :data:`GIT_DIFF_CAP_BYTES` with a note line when
    ``diff_truncated``; empty for a clean checkout, ``None`` when there is no commit or
    the diff could not be read.
    """

    toplevel: str
    commit: str | None
    branch: str | None
    dirty: bool | None
    untracked_files: int | None
    remote: str | None
    patch: bytes | None = attrs.field(default=None, repr=False)
    diff_truncated: bool = False

    def as_info(self) -> dict[str, str]:
        """The ``key: value`` pairs of ``git_info.txt``, in the file's order."""
        return {
            "commit": self.commit or _NO_COMMIT,
            "branch": self.branch or _DETACHED,
            "dirty": _UNKNOWN if self.dirty is None else str(self.dirty).lower(),
            "untracked_files": _UNKNOWN
            if self.untracked_files is None
            else str(self.untracked_files),
            "remote": self.remote or _NO_REMOTE,
            "toplevel": self.toplevel,
        }

    def info_text(self) -> str:
        """The text of ``git_info.txt``: one ``key: value`` line per :meth:`as_info` pair."""
        return "".join(f"{key}: {value}\n" for key, value in self.as_info().items())

    def bundle_record(self) -> dict[str, Any]:
        """The git section of the rerun bundle: commit, branch and dirty flag as
        ``git_info.txt`` spells them, the top level, and the diff's file, size,
        SHA-256 and whether it was cut."""
        info = self.as_info()
        patch = self.patch
        return {
            "commit": info["commit"],
            "branch": info["branch"],
            "dirty": info["dirty"],
            "toplevel": self.toplevel,
            "diff_file": GIT_DIFF_FILE if patch else None,
            "diff_bytes": len(patch) if patch else 0,
            "diff_sha256": hashlib.sha256(patch).hexdigest() if patch else None,
            "diff_truncated": bool(patch) and self.diff_truncated,
        }

    def source_tags(self) -> dict[str, str]:
        """MLflow's ``mlflow.source.git.*`` tags for what is known (commit, branch)."""
        known = {"commit": self.commit, "branch": self.branch}
        return {_MLFLOW_TAGS[key]: value for key, value in known.items() if value}

    @classmethod
    def from_info(cls, info: Mapping[str, str], patch: bytes | None = None) -> GitState:
        """The state a ``git_info.txt`` (as :func:`read_git_info` returns it) records,
        with the ``git_diff.patch`` beside it when given. Missing keys read as unknown."""

        def known(key: str, *absent: str) -> str | None:
            value = info.get(key)
            return None if not value or value in absent else value

        dirty = known("dirty", _UNKNOWN)
        untracked = known("untracked_files", _UNKNOWN)
        return cls(
            toplevel=info.get("toplevel", ""),
            commit=known("commit", _NO_COMMIT),
            branch=known("branch", _DETACHED),
            dirty=None if dirty is None else dirty == "true",
            untracked_files=int(untracked) if untracked and untracked.isdigit() else None,
            remote=known("remote", _NO_REMOTE),
            patch=patch,
            diff_truncated=patch is not None and GIT_DIFF_TRUNCATED_MARK in patch[-4096:],
        )


def read_git_info(reports: Path) -> dict[str, str] | None:
    """The ``key: value`` lines of ``reports/git_info.txt`` of a run on disk; ``None``
    when there is no such file (no checkout, no git). Blank lines, comments and lines
    without a colon are skipped."""
    try:
        text = (reports / GIT_INFO_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            info[key.strip()] = value.strip()
    return info


def read_recorded_git_state(reports: Path) -> GitState | None:
    """The git state a run on disk recorded: its ``reports/git_info.txt`` and the
    ``git_diff.patch`` beside it; ``None`` when there is no ``git_info.txt``."""
    info = read_git_info(reports)
    if info is None:
        return None
    try:
        patch: bytes | None = (reports / GIT_DIFF_FILE).read_bytes()
    except OSError:
        patch = None
    return GitState.from_info(info, patch)


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    # Never prompt for credentials, and never take index.lock for a read-only look
    # (that could make the user's own concurrent git command fail).
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0")
    return env


def _git_start(
    git: str, args: Sequence[str], cwd: Path, env: Mapping[str, str]
) -> subprocess.Popen[bytes] | None:
    """``git args`` started with its stdout piped, or ``None`` when it cannot start."""
    try:
        return subprocess.Popen(
            [git, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError as exc:
        _log.debug("git %s could not start in %s: %s", " ".join(args), cwd, exc)
        return None


def _git_read(
    started: Sequence[tuple[subprocess.Popen[bytes] | None, int | None]],
) -> list[tuple[bytes, bool] | None]:
    """What each started git writes (at most its ``limit`` bytes) and whether it was cut,
    the gits read together, as they write.

    A git is killed once it has written more than its ``limit``, so a huge output costs
    neither memory nor time, and when all of them have not finished within
    ``_GIT_TIMEOUT_S`` (one deadline, kept by ``select``: no timer thread per git, and
    no ``communicate(timeout=...)``, which polls with growing sleeps). ``None`` for a
    git that could not start, failed or ran out of time.
    """
    deadline = time.monotonic() + _GIT_TIMEOUT_S
    chunks: list[list[bytes]] = [[] for _ in started]
    sizes = [0] * len(started)
    cut: set[int] = set()
    with selectors.DefaultSelector() as selector:
        for index, (proc, _) in enumerate(started):
            if proc is not None and proc.stdout is not None:
                selector.register(proc.stdout, selectors.EVENT_READ, index)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                index = key.data
                proc, limit = started[index]
                data = os.read(key.fd, _READ_CHUNK)
                chunks[index].append(data)
                sizes[index] += len(data)
                if not data or (limit is not None and sizes[index] > limit):
                    selector.unregister(key.fileobj)
                    if data:
                        cut.add(index)
        late = {key.data for key in selector.get_map().values()}
    results: list[tuple[bytes, bool] | None] = []
    for index, (proc, limit) in enumerate(started):
        if proc is None:
            results.append(None)
            continue
        if index in cut or index in late:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
        returncode = proc.wait()
        data = b"".join(chunks[index])
        if index in cut:
            results.append((data[:limit], True))
        elif index in late:
            _log.warning("git %s took longer than %.0f s; skipped", proc.args, _GIT_TIMEOUT_S)
            results.append(None)
        else:
            results.append(None if returncode != 0 else (data, False))
    return results


def _text(done: tuple[bytes, bool] | None) -> str | None:
    """A git's stripped stdout, or ``None`` when it failed or timed out."""
    return None if done is None else done[0].decode("utf-8", errors="replace").strip()


def _git_finish(proc: subprocess.Popen[bytes] | None) -> str | None:
    """The stripped stdout of a started git, or ``None`` when it failed or timed out."""
    return _text(_git_read([(proc, None)])[0])


def _truncated_patch(head: bytes, cap: int) -> bytes:
    # Cut at a line boundary when there is one, so the kept part stays readable.
    newline = head.rfind(b"\n")
    kept = head[: newline + 1] if newline >= 0 else head + b"\n"
    note = (
        f"{GIT_DIFF_TRUNCATED_MARK.decode()}; only the first {len(kept)} bytes are kept "
        f"(the full diff is larger than {cap} bytes). Run `git diff HEAD` in the "
        f"checkout at the recorded commit for all of it.\n"
    )
    return kept + note.encode("utf-8")


def _remote_url(remotes: str | None) -> str | None:
    """``origin`` (else the first remote) and its fetch URL, from ``git remote -v``."""
    urls: dict[str, str] = {}
    for line in (remotes or "").splitlines():
        name, _, rest = line.partition("\t")
        url, _, kind = rest.rpartition(" ")
        if name and url and kind == "(fetch)":
            urls.setdefault(name, url)
    if not urls:
        return None
    name = "origin" if "origin" in urls else next(iter(urls))
    return f"{name} {redact_url(urls[name])}"


@attrs.frozen
class _Status:
    """What ``git status --porcelain=v2 --branch`` says of a checkout."""

    commit: str | None
    branch: str | None
    changed: int
    untracked: int

    @classmethod
    def parse(cls, text: str) -> _Status:
        commit: str | None = None
        branch: str | None = None
        changed = untracked = 0
        for line in text.splitlines():
            if line.startswith("# branch.oid "):
                oid = line[len("# branch.oid ") :]
                commit = None if oid == "(initial)" else oid
            elif line.startswith("# branch.head "):
                head = line[len("# branch.head ") :]
                branch = None if head == "(detached)" else head
            elif line.startswith("? "):
                untracked += 1
            elif line[:2] in ("1 ", "2 ", "u "):
                changed += 1
        return cls(commit=commit, branch=branch, changed=changed, untracked=untracked)


def _checkout_root(cwd: Path, env: Mapping[str, str]) -> str | None:
    """The folder git would take for the top level of the checkout ``cwd`` is in: the
    first folder holding ``.git`` (a folder, or a file naming one) on the way up from
    the physical ``cwd``, as git itself walks. ``None`` where there is none: git finds
    no checkout either, and no process need be started to learn so. ``""`` when
    ``GIT_DIR`` or ``GIT_WORK_TREE`` is set: then only git can tell.
    """
    if any(env.get(name) for name in _GIT_LOCATION_VARS):
        return ""
    folder = os.path.realpath(cwd)
    while True:
        if os.path.lexists(os.path.join(folder, ".git")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def read_git_state(cwd: Path | None = None) -> GitState | None:
    """The git state of the checkout ``cwd`` (default: the working directory) is in;
    ``None`` outside a checkout, without ``git`` on ``PATH`` or when the working
    directory is gone. Never raises for git's sake: a git that fails or takes longer
    than 15 s leaves its part unknown.

    Three gits, run at once and read together: the state (commit, branch, changes), the
    remotes, and the diff. The top level is the folder holding
    ``.git``; git is asked for it only where that walk cannot tell (``GIT_DIR`` or
    ``GIT_WORK_TREE`` set) or where ``git status`` fails (then, as ``git rev-parse
    --show-toplevel`` says, it may be no checkout after all: inside ``.git``, a
    repository of another owner).
    """
    pending = start_git_read(cwd)
    return None if pending is None else pending.finish()


class PendingGitState:
    """The gits of :func:`read_git_state`, started and not yet read: the caller does
    other work while they run, then calls :meth:`finish` (or :meth:`close` to give
    them up). Made by :func:`start_git_read`."""

    def __init__(
        self,
        git: str,
        where: Path,
        env: dict[str, str],
        root: str,
        started: list[tuple[subprocess.Popen[bytes] | None, int | None]],
    ) -> None:
        self._git, self._where, self._env, self._root = git, where, env, root
        self._started: list[tuple[subprocess.Popen[bytes] | None, int | None]] | None = started

    def close(self) -> None:
        """Stop and reap the gits not read yet (after :meth:`finish`, nothing to do)."""
        started, self._started = self._started, None
        for proc, _ in started or ():
            if proc is not None:
                proc.kill()
                if proc.stdout is not None:
                    proc.stdout.close()
                proc.wait()

    def finish(self) -> GitState | None:
        """Read the started gits (see :func:`read_git_state`) and return the state."""
        started, self._started = self._started, None
        if started is None:
            raise RuntimeError("the git state was already read or given up")
        git, where, env, root = self._git, self._where, self._env, self._root
        diff_done, status_done, remotes_done = _git_read(started)
        diff = diff_done
        status_text = _text(status_done)
        remotes = _text(remotes_done)
        status = _Status.parse(status_text) if status_text is not None else None
        toplevel: str | None = root
        if status is None or not root:
            toplevel = _git_finish(_git_start(git, ["rev-parse", "--show-toplevel"], where, env))
        if not toplevel:
            _log.debug("%s is not inside a git checkout; no git state read", where)
            return None
        if status is not None:
            commit, branch = status.commit, status.branch
        else:
            commit = _git_finish(
                _git_start(git, ["rev-parse", "--verify", "--quiet", "HEAD"], where, env)
            )
            branch = _git_finish(
                _git_start(git, ["symbolic-ref", "--short", "--quiet", "HEAD"], where, env)
            )
        patch: bytes | None = None
        truncated = False
        if commit and diff is not None:
            patch, truncated = diff
            if truncated:
                _log.info("git diff HEAD exceeds %d bytes; the patch is truncated", len(patch))
                patch = _truncated_patch(patch, GIT_DIFF_CAP_BYTES)
        return GitState(
            toplevel=toplevel,
            commit=commit or None,
            branch=branch or None,
            dirty=None if status is None else status.changed > 0,
            untracked_files=None if status is None else status.untracked,
            remote=_remote_url(remotes),
            patch=patch,
            diff_truncated=truncated,
        )


def start_git_read(cwd: Path | None = None) -> PendingGitState | None:
    """Start the gits of :func:`read_git_state` and return them unread; ``None``
    where :func:`read_git_state` returns ``None`` without starting any."""
    git = shutil.which("git")
    if git is None:
        _log.debug("git is not on PATH; no git state read")
        return None
    try:
        where = Path.cwd() if cwd is None else Path(cwd)
    except OSError as exc:
        _log.debug("the working directory is gone (%s); no git state read", exc)
        return None
    env = _git_env()
    root = _checkout_root(where, env)
    if root is None:
        _log.debug("%s is not inside a git checkout; no git state read", where)
        return None
    started: list[tuple[subprocess.Popen[bytes] | None, int | None]] = [
        (
            _git_start(git, ["diff", "HEAD", "--no-color", "--no-ext-diff"], where, env),
            GIT_DIFF_CAP_BYTES,
        ),
        (
            _git_start(
                git,
                ["status", "--porcelain=v2", "--branch", "--untracked-files=normal"],
                where,
                env,
            ),
            None,
        ),
        (_git_start(git, ["remote", "-v"], where, env), None),
    ]
    return PendingGitState(git, where, env, root, started)
