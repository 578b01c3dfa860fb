"""Phase 5, manifest: what a run needs on disk to be audited and reproduced later.

``AuditSaver`` writes, into the run's ``reports/`` folder:

- ``config.yaml``: the resolved config, secrets redacted;
- ``requirements.txt``: every installed distribution as ``name==version``, with
  editable, local, archive and VCS installs marked from their ``direct_url.json``;
- ``git_info.txt`` and ``git_diff.patch``: commit, branch, dirty flag and remote of the
  git checkout the run was started from, and its uncommitted changes (capped at 1 MiB).
  Outside a checkout, or without ``git``, these two files are simply not written.

and, from them, the rerun bundle ``rerun.json`` (see :mod:`orchestrator_fsm.reproduce.bundle`).

``record_invocation`` describes how the process was started, for ``run.json``.
Every file is written atomically.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import attrs
import yaml

from orchestrator_fsm._fs import atomic_write_bytes, atomic_write_text
from orchestrator_fsm._system import name_and_version
from orchestrator_fsm.layout import GIT_INFO_FILE, REQUIREMENTS_FILE
from orchestrator_fsm.redaction import redact_secrets, redact_url

if TYPE_CHECKING:
    from orchestrator_fsm.phases.context import RunContext

__all__ = [
    "GIT_DIFF_CAP_BYTES",
    "GIT_DIFF_FILE_NAME",
    "GIT_DIFF_TRUNCATED_MARK",
    "AuditSaver",
    "read_git_info",
    "record_invocation",
    "requirement_lines",
    "step",
]

GIT_DIFF_FILE_NAME: Final = "git_diff.patch"
GIT_DIFF_CAP_BYTES: Final = 1024 * 1024
"""The most bytes of ``git diff HEAD`` kept in ``git_diff.patch``."""
GIT_DIFF_TRUNCATED_MARK: Final = b"# orchestrator-fsm: diff truncated"
"""How the note line a cut ``git_diff.patch`` ends with begins."""

_GIT_TIMEOUT_S: Final = 15.0
_LISTING_SETTLE_NS: Final = 2_000_000_000
_NORMALIZE_NAME: Final = re.compile(r"[-_.]+")

# A child of the run logger, so that what the manifest step notes lands in run.log.
_log = logging.getLogger("orchestrator_fsm.run.manifest")


@runtime_checkable
class SerializableConfig(Protocol):
    """Anything that can turn itself into plain data, like ``Config``."""

    def dump_serialized(self) -> Mapping[str, Any]: ...


def _redact(data: Any) -> Any:
    return redact_secrets(data)


def _redact_url(url: str) -> str:
    return redact_url(url)


def _plain_key(key: object, where: str) -> object:
    if key is None or isinstance(key, (bool, int, float, str)):
        return _to_plain(key, where)
    raise TypeError(
        f"config key {key!r} at {where or 'the top level'} has type {type(key).__name__}; "
        f"expected a string or number"
    )


def _to_plain(value: Any, where: str) -> Any:
    """``value`` as data ``yaml.safe_dump`` accepts, or ``TypeError`` naming its path."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return _to_plain(value.value, where)
    # Subclasses of the scalar types have no safe representer: reduce them to the base.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {
            _plain_key(key, where): _to_plain(item, f"{where}.{key}" if where else str(key))
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_to_plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise TypeError(
        f"config value at {where or 'the top level'} has type {type(value).__name__}; "
        f"expected plain data (str, int, float, bool, None, date, path, list or mapping)"
    )


def _install_marker(direct_url: Mapping[str, Any]) -> str | None:
    """How a distribution was installed, from its PEP 610 ``direct_url.json``."""
    url = direct_url.get("url")
    if not isinstance(url, str) or not url:
        return None
    url = _redact_url(url)
    vcs_info = direct_url.get("vcs_info")
    if isinstance(vcs_info, Mapping):
        vcs = str(vcs_info.get("vcs") or "vcs")
        commit = vcs_info.get("commit_id")
        return f"vcs: {vcs}+{url}@{commit}" if commit else f"vcs: {vcs}+{url}"
    dir_info = direct_url.get("dir_info")
    if isinstance(dir_info, Mapping):
        return f"editable: {url}" if dir_info.get("editable") else f"local: {url}"
    if isinstance(direct_url.get("archive_info"), Mapping):
        return f"archive: {url}"
    return None


def _read_direct_url(dist: metadata.Distribution) -> Mapping[str, Any] | None:
    try:
        text = dist.read_text("direct_url.json")
    except OSError:
        return None
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, Mapping) else None


def _listing_key() -> tuple[tuple[str, int], ...] | None:
    """What the installed distributions depend on: each ``sys.path`` folder and its mtime.

    Installing, upgrading or removing a distribution adds or removes a ``.dist-info``
    folder, which changes the mtime of the folder holding it; a path entry that does
    not exist counts with mtime -1, so creating it later changes the key too. ``None``
    (do not cache) while a folder changed in the last seconds: file times advance in
    clock ticks of a few milliseconds, so a change made in the same tick as the key was
    taken would otherwise go unseen.
    """
    key = []
    recent = time.time_ns() - _LISTING_SETTLE_NS
    for entry in sys.path:
        where = os.path.abspath(entry or os.curdir)
        try:
            mtime = os.stat(where).st_mtime_ns
        except OSError:
            mtime = -1
        if mtime > recent:
            return None
        key.append((where, mtime))
    return tuple(key)


_listing_cache: tuple[tuple[tuple[str, int], ...], tuple[str, ...]] | None = None


def requirement_lines() -> list[str]:
    """One ``name==version`` line per installed distribution, sorted by name.

    Kept for the process while no ``sys.path`` folder changes (see :func:`_listing_key`),
    so a second run in one process reads no metadata file again.
    """
    global _listing_cache
    key = _listing_key()
    cached = _listing_cache
    if key is not None and cached is not None and cached[0] == key:
        return list(cached[1])
    entries: dict[str, tuple[str, str]] = {}
    for dist in metadata.distributions():
        name, version = name_and_version(dist)
        if not name or not version:
            _log.debug("skipping a distribution without name or version at %r", dist)
            continue
        key_name = _NORMALIZE_NAME.sub("-", name).lower()
        # The first distribution found for a name is the one imports resolve to.
        if key_name in entries:
            continue
        line = f"{name}=={version}"
        direct_url = _read_direct_url(dist)
        marker = _install_marker(direct_url) if direct_url is not None else None
        if marker is not None:
            line = f"{line}  # {marker}"
        entries[key_name] = (name.lower(), line)
    lines = [line for _, line in sorted(entries.values())]
    _listing_cache = None if key is None else (key, tuple(lines))
    return lines


def _requirements_header() -> list[str]:
    # The first line is exactly "# Python <version>", so tools can read it back alone.
    return [
        f"# Python {platform.python_version()}",
        f"# Interpreter {platform.python_implementation()} at {sys.executable}",
        f"# Platform {platform.platform()}",
        "# Installed distributions (importlib.metadata), recorded by orchestrator-fsm",
    ]


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    # Never prompt for credentials, and never take index.lock for a read-only look
    # (that could make the user's own concurrent git command fail).
    env.update(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0")
    return env


def _git_start(git: str, args: Sequence[str], cwd: Path) -> subprocess.Popen[bytes] | None:
    """``git args`` started with its stdout piped, or ``None`` when it cannot start."""
    try:
        return subprocess.Popen(
            [git, *args],
            cwd=cwd,
            env=_git_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError as exc:
        _log.debug("git %s could not start in %s: %s", " ".join(args), cwd, exc)
        return None


def _git_read(proc: subprocess.Popen[bytes], limit: int | None = None) -> tuple[bytes, bool] | None:
    """What a started git writes (at most ``limit`` bytes) and whether it was cut.

    Git is killed once it has written more than ``limit`` bytes, so a huge output costs
    neither memory nor time, and after ``_GIT_TIMEOUT_S`` by a timer (rather than
    ``communicate(timeout=...)``, which polls the child with growing sleeps and costs
    about a millisecond per call). ``None`` when git fails or runs out of time.
    """
    timed_out = threading.Event()

    def _expire() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(_GIT_TIMEOUT_S, _expire)
    timer.start()
    try:
        assert proc.stdout is not None  # stdout=PIPE
        with proc.stdout:
            data = proc.stdout.read() if limit is None else proc.stdout.read(limit + 1)
            truncated = limit is not None and len(data) > limit
            if truncated:
                proc.kill()
        returncode = proc.wait()
    finally:
        timer.cancel()
    if truncated:
        return data[:limit], True
    if timed_out.is_set():
        _log.warning("git %s took longer than %.0f s; skipped", proc.args, _GIT_TIMEOUT_S)
        return None
    if returncode != 0:
        return None
    return data, False


def _git_finish(proc: subprocess.Popen[bytes] | None) -> str | None:
    """The stripped stdout of a started git, or ``None`` when it failed or timed out."""
    done = _git_read(proc) if proc is not None else None
    if done is None:
        return None
    return done[0].decode("utf-8", errors="replace").strip()


def _git_output(git: str, args: Sequence[str], cwd: Path) -> str | None:
    """Stdout of ``git args`` (stripped), or ``None`` when it fails or times out."""
    return _git_finish(_git_start(git, args, cwd))


def _capped_diff(git: str, cwd: Path, cap: int) -> tuple[bytes, bool] | None:
    """``git diff HEAD``, at most ``cap`` bytes of it, and whether it was cut."""
    proc = _git_start(git, ["diff", "HEAD", "--no-color", "--no-ext-diff"], cwd)
    return _git_read(proc, cap) if proc is not None else None


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
    return f"{name} {_redact_url(urls[name])}"


@attrs.frozen
class _GitStatus:
    """What ``git status --porcelain=v2 --branch`` says of a checkout."""

    commit: str | None
    branch: str | None
    changed: int
    untracked: int

    @classmethod
    def parse(cls, text: str) -> _GitStatus:
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


def read_git_info(reports: Path) -> dict[str, str] | None:
    """The ``key: value`` lines of ``reports/git_info.txt`` as :meth:`AuditSaver.dump_git_info`
    wrote them; ``None`` when there is no such file (no checkout, no git)."""
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


class AuditSaver:
    """Writes the run manifest: config, installed distributions and git state."""

    def save_config(self, data: Mapping[str, Any] | SerializableConfig, yaml_path: Path) -> Path:
        """Write ``data`` as YAML to ``yaml_path`` atomically, secrets redacted; return the path.

        ``data`` is a mapping, or an object with ``dump_serialized()`` (a ``Config``)
        whose result is written. Keys keep their order. Values of secret-looking keys
        and passwords in URLs become ``***``. Paths and enums are written as their
        string or value; any other non-plain value raises ``TypeError`` naming its
        dotted path.
        """
        if isinstance(data, SerializableConfig):
            data = data.dump_serialized()
        if not isinstance(data, Mapping):
            raise TypeError(
                f"save_config expects a mapping or an object with dump_serialized(), "
                f"got {type(data).__name__}"
            )
        plain = _redact(_to_plain(data, ""))
        text = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, default_flow_style=False)
        target = Path(yaml_path)
        atomic_write_text(target, text)
        return target

    def dump_requirements(self, path: Path) -> None:
        """Write every installed distribution to ``path`` as ``name==version`` lines.

        Read from ``importlib.metadata`` (no pip subprocess), one line per distribution
        name (the first found on ``sys.path`` wins), sorted case-insensitively, under
        a header whose first line is ``# Python <version>`` and whose next lines name
        the interpreter and the platform. Installs from a direct URL
        carry a comment: ``# editable: file:///...``, ``# local: ...``,
        ``# archive: ...`` or ``# vcs: git+https://...@<commit>``.
        """
        lines = _requirements_header() + requirement_lines()
        atomic_write_text(Path(path), "\n".join(lines) + "\n")

    def dump_git_info(self, path: Path) -> None:
        """Record the git state of the working directory in ``path`` and beside it.

        ``path`` (``git_info.txt``) gets ``key: value`` lines: commit, branch, dirty
        (tracked files changed), untracked_files, remote (password redacted) and
        toplevel. ``git_diff.patch`` in the same folder gets ``git diff HEAD``, cut at
        1 MiB with a note line when larger; a clean checkout has no patch (one left by an
        earlier attempt of the run is removed). When the working directory is not in a git
        checkout, or ``git`` is not on ``PATH``, nothing is written and nothing raised.
        """
        git = shutil.which("git")
        if git is None:
            _log.debug("git is not on PATH; no git info recorded")
            return
        try:
            cwd = Path.cwd()
        except OSError as exc:
            _log.debug("the working directory is gone (%s); no git info recorded", exc)
            return
        toplevel = _git_output(git, ["rev-parse", "--show-toplevel"], cwd)
        if not toplevel:
            _log.debug("%s is not inside a git checkout; no git info recorded", cwd)
            return

        # Three independent reads, run at once: the state (commit, branch, changes),
        # the remotes, and the diff, streamed here while the other two run.
        status_proc = _git_start(
            git, ["status", "--porcelain=v2", "--branch", "--untracked-files=normal"], cwd
        )
        remotes_proc = _git_start(git, ["remote", "-v"], cwd)
        diff = _capped_diff(git, cwd, GIT_DIFF_CAP_BYTES)
        status_text = _git_finish(status_proc)
        remotes = _git_finish(remotes_proc)
        status = _GitStatus.parse(status_text) if status_text is not None else None
        if status is not None:
            commit, branch = status.commit, status.branch
        else:
            commit = _git_output(git, ["rev-parse", "--verify", "--quiet", "HEAD"], cwd)
            branch = _git_output(git, ["symbolic-ref", "--short", "--quiet", "HEAD"], cwd)
        info = {
            "commit": commit or "none (no commits yet)",
            "branch": branch or "(detached HEAD)",
            "dirty": "unknown" if status is None else str(status.changed > 0).lower(),
            "untracked_files": "unknown" if status is None else str(status.untracked),
            "remote": _remote_url(remotes) or "none",
            "toplevel": toplevel,
        }
        path = Path(path)
        if commit and diff is not None:
            patch, truncated = diff
            if truncated:
                _log.info("git diff HEAD exceeds %d bytes; the patch is truncated", len(patch))
                patch = _truncated_patch(patch, GIT_DIFF_CAP_BYTES)
            if patch:
                atomic_write_bytes(path.parent / GIT_DIFF_FILE_NAME, patch)
            else:  # nothing changed: no empty file that looks like a record of changes
                (path.parent / GIT_DIFF_FILE_NAME).unlink(missing_ok=True)
        atomic_write_text(path, "".join(f"{key}: {value}\n" for key, value in info.items()))


#: The console script this package installs: recorded by name, not by where it lives.
_CONSOLE_SCRIPT: Final = "orchestrator-fsm"


def _entry_point(argv0: str) -> str | None:
    if not argv0 or argv0 in ("-c", "-"):
        return None
    if Path(argv0).name == _CONSOLE_SCRIPT:
        return _CONSOLE_SCRIPT
    candidate = Path(argv0)
    if not candidate.exists():
        found = shutil.which(argv0)
        if found is None:
            return argv0
        candidate = Path(found)
    return str(candidate.resolve())


def record_invocation() -> dict[str, Any]:
    """How this process was started, as plain data for ``run.json``.

    Keys: ``argv``; ``cwd`` (``None`` if it no longer exists); ``entry_point`` (the
    resolved path of ``sys.argv[0]``, ``orchestrator-fsm`` for this package's command,
    ``None`` for ``-c`` or an interactive session);
    ``entry_module`` (the module run with ``python -m``, else ``None``); ``python``
    (version); ``python_executable``; ``python_implementation``.
    """
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    try:
        cwd: str | None = os.getcwd()
    except OSError:
        cwd = None
    return {
        "argv": list(sys.argv),
        "cwd": cwd,
        "entry_point": _entry_point(sys.argv[0] if sys.argv else ""),
        "entry_module": getattr(spec, "name", None),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "python_implementation": platform.python_implementation(),
    }


def step(run: RunContext) -> None:
    """Phase 5: the resolved config, the installed distributions, the git state and
    the rerun bundle (``reports/rerun.json``).

    The audit saver is called as ``save_config(data=cfg, yaml_path=...)``,
    ``dump_requirements(path)`` and ``dump_git_info(path)``. Files written stay on
    rollback, like the run directory.
    """
    paths = run.require_paths()
    saver = run.deps.audit_saver
    saver.save_config(data=run.cfg, yaml_path=paths.get_config_path())
    saver.dump_requirements(paths.reports / REQUIREMENTS_FILE)
    saver.dump_git_info(paths.reports / GIT_INFO_FILE)
    # What a rerun needs, read from the files just written (see reproduce/bundle.py).
    from orchestrator_fsm.reproduce.bundle import write_bundle

    write_bundle(run)
