"""Phase 5, manifest: what a run needs on disk to be audited and reproduced later.

``AuditSaver`` writes, into the run's ``reports/`` folder:

- ``config.yaml``: the resolved config, secrets redacted (:func:`redacted_config`);
- ``requirements.txt``: every installed distribution as ``name==version``, with
  editable, local, archive and VCS installs marked from their ``direct_url.json``;
- ``git_info.txt`` and ``git_diff.patch``: commit, branch, dirty flag and remote of the
  git checkout the run was started from, and its uncommitted changes (capped at 1 MiB),
  from one :class:`~orchestrator_fsm.git_state.GitState`. Outside a checkout, or
  without ``git``, these two files are simply not written.

The step keeps what it recorded as data (``RunContext.manifest``):
the rerun bundle ``rerun.json`` (:mod:`orchestrator_fsm.phases.bundle`) and the
environment report are made from it, not from the files read back.

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
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import yaml

from orchestrator_fsm._fs import atomic_write_bytes, atomic_write_text
from orchestrator_fsm._system import name_and_version, record_invocation
from orchestrator_fsm._yaml import FastDumper
from orchestrator_fsm.git_state import (
    GitState,
    read_git_state,
    read_recorded_git_state,
    start_git_read,
)
from orchestrator_fsm.layout import GIT_DIFF_FILE, GIT_INFO_FILE, REQUIREMENTS_FILE
from orchestrator_fsm.phases.bundle import keep_earlier_attempt, write_bundle
from orchestrator_fsm.redaction import REDACTED, looks_secret, redact_url
from orchestrator_fsm.run_context import Manifest

if TYPE_CHECKING:
    from orchestrator_fsm.run_context import RunContext

__all__ = [
    "AuditSaver",
    "redacted_config",
    "requirement_lines",
    "step",
    "write_git_state",
]


_LISTING_SETTLE_NS: Final = 2_000_000_000
_NORMALIZE_NAME: Final = re.compile(r"[-_.]+")

# A child of the run logger, so that what the manifest step notes lands in run.log.
_log = logging.getLogger("orchestrator_fsm.run.manifest")


@runtime_checkable
class SerializableConfig(Protocol):
    """Anything that can turn itself into plain data, like ``Config``."""

    def dump_serialized(self) -> Mapping[str, Any]: ...


_TOP: Final = object()


def _spell(parent: str, key: object, indexed: bool) -> str:
    """The dotted path of ``key`` in ``parent`` (``a.b``, ``a[0]``) for a message."""
    if key is _TOP:
        return parent
    if indexed:
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _plain_key(key: object, where: str) -> object:
    # Keys are made plain like values, but never redacted (only values hold secrets).
    if isinstance(key, enum.Enum) and isinstance(key, (bool, int, float, str)):
        return _plain_key(key.value, where)
    if key is None or isinstance(key, bool):
        return key
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, int):
        return int(key)
    if isinstance(key, float):
        return float(key)
    raise TypeError(
        f"config key {key!r} at {where or 'the top level'} has type {type(key).__name__}; "
        f"expected a string or number"
    )


def _plain(value: Any, parent: str, key: object = _TOP, indexed: bool = False) -> Any:
    """``value`` (at ``key`` in ``parent``) as data ``yaml.safe_dump`` accepts, secrets
    redacted as :func:`~orchestrator_fsm.redaction.redact_secrets` redacts them, or
    ``TypeError`` naming its dotted path. One walk does both; a path is spelled only
    for a container or an error."""
    cls = type(value)
    # The common cases first, by exact type: most values are these.
    if cls is str:
        return redact_url(value)
    if value is None or cls is bool or cls is int or cls is float:
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value, parent, key, indexed)
    # Subclasses of the scalar types have no safe representer: reduce them to the base.
    if isinstance(value, str):
        return redact_url(str.__str__(value))
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value
    if isinstance(value, PurePath):
        return redact_url(str(value))
    where = _spell(parent, key, indexed)
    if isinstance(value, Mapping):
        plain: dict[object, Any] = {}
        for name, item in value.items():
            plain_name = _plain_key(name, where)
            plain_item = _plain(item, where, name)
            secret = plain_item is not None and looks_secret(plain_name)
            plain[plain_name] = REDACTED if secret else plain_item
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain(item, where, index, True) for index, item in enumerate(value)]
    raise TypeError(
        f"config value at {where or 'the top level'} has type {type(value).__name__}; "
        f"expected plain data (str, int, float, bool, None, date, path, list or mapping)"
    )


def _install_marker(direct_url: Mapping[str, Any]) -> str | None:
    """How a distribution was installed, from its PEP 610 ``direct_url.json``."""
    url = direct_url.get("url")
    if not isinstance(url, str) or not url:
        return None
    url = redact_url(url)
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


# What the listing depends on in one sys.path folder: its mtime and the names of the
# distribution folders in it.
_FolderState = tuple[str, int, tuple[str, ...]]
_DIST_SUFFIXES: Final = (".dist-info", ".egg-info")


def _dist_names(where: str) -> tuple[str, ...]:
    """The distribution folders in ``where`` (sorted), where ``importlib.metadata``
    finds them; ``()`` for a folder that cannot be listed (a zip on ``sys.path`` is
    keyed by its mtime alone)."""
    try:
        with os.scandir(where) as entries:
            return tuple(
                sorted(entry.name for entry in entries if entry.name.endswith(_DIST_SUFFIXES))
            )
    except OSError:
        return ()


def _listing_state(known: tuple[_FolderState, ...] | None) -> tuple[_FolderState, ...] | None:
    """What the installed distributions depend on now: each ``sys.path`` folder, its
    mtime and its distribution folders; None when that differs from ``known``.

    Installing, upgrading or removing a distribution adds or removes a ``.dist-info``
    folder. A folder whose mtime is as in ``known`` is taken as unchanged without
    listing it; one whose mtime moved (any file made or removed in it: a project
    folder on ``sys.path``, ``/tmp``) is listed, and only a change in its
    distribution folders counts. A folder changed in the last seconds is listed every
    time (its mtime is kept as -2): file times advance in clock ticks of a few
    milliseconds, so a change in the same tick would leave the mtime as it was.
    """
    folders = [os.path.abspath(entry or os.curdir) for entry in sys.path]
    if known is not None and [where for where, _, _ in known] != folders:
        return None
    recent = time.time_ns() - _LISTING_SETTLE_NS
    state: list[_FolderState] = []
    for index, where in enumerate(folders):
        try:
            mtime = os.stat(where).st_mtime_ns
        except OSError:
            mtime = -1
        before = None if known is None else known[index]
        if before is not None and before[1] == mtime and mtime <= recent:
            state.append(before)
            continue
        names = _dist_names(where) if mtime != -1 else ()
        if before is not None and before[2] != names:
            return None
        state.append((where, -2 if mtime > recent else mtime, names))
    return tuple(state)


_listing_cache: tuple[tuple[_FolderState, ...], tuple[str, ...]] | None = None


def requirement_lines() -> list[str]:
    """One ``name==version`` line per installed distribution, sorted by name.

    Kept for the process while no distribution folder appears in or leaves a
    ``sys.path`` folder (see :func:`_listing_state`), so a second run in one process
    reads no metadata file again.
    """
    global _listing_cache
    cached = _listing_cache
    if cached is not None:
        state = _listing_state(cached[0])
        if state is not None:
            _listing_cache = (state, cached[1])
            return list(cached[1])
    state = _listing_state(None)
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
    if state is not None:
        _listing_cache = (state, tuple(lines))
    return lines


def _requirements_header() -> list[str]:
    # The first line is exactly "# Python <version>", so tools can read it back alone.
    return [
        f"# Python {platform.python_version()}",
        f"# Interpreter {platform.python_implementation()} at {sys.executable}",
        f"# Platform {platform.platform()}",
        "# Installed distributions (importlib.metadata), recorded by orchestrator-fsm",
    ]


def redacted_config(data: Mapping[str, Any] | SerializableConfig) -> dict[str, Any]:
    """``data`` as :meth:`AuditSaver.save_config` writes it, as plain data: keys in
    order, secret values and URL passwords as ``***``, paths and enums as strings and
    values. ``TypeError`` for a value that is not plain data, naming its dotted path,
    or for ``data`` that is neither a mapping nor has ``dump_serialized()``."""
    if isinstance(data, SerializableConfig):
        data = data.dump_serialized()
    if not isinstance(data, Mapping):
        raise TypeError(
            f"save_config expects a mapping or an object with dump_serialized(), "
            f"got {type(data).__name__}"
        )
    plain: dict[str, Any] = _plain(data, "")
    return plain


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
        return _save_plain_config(redacted_config(data), Path(yaml_path))

    def dump_requirements(self, path: Path) -> list[str]:
        """Write every installed distribution to ``path`` as ``name==version`` lines.

        Read from ``importlib.metadata`` (no pip subprocess), one line per distribution
        name (the first found on ``sys.path`` wins), sorted case-insensitively, under
        a header whose first line is ``# Python <version>`` and whose next lines name
        the interpreter and the platform. Installs from a direct URL
        carry a comment: ``# editable: file:///...``, ``# local: ...``,
        ``# archive: ...`` or ``# vcs: git+https://...@<commit>``. Returns the
        distribution lines (:func:`requirement_lines`, without the header).
        """
        listed = requirement_lines()
        atomic_write_text(Path(path), "\n".join([*_requirements_header(), *listed]) + "\n")
        return listed

    def dump_git_info(self, path: Path) -> GitState | None:
        """Record the git state of the working directory in ``path`` and beside it;
        return it (``None`` when nothing was recorded).

        ``path`` (``git_info.txt``) gets ``key: value`` lines: commit, branch, dirty
        (tracked files changed), untracked_files, remote (password redacted) and
        toplevel. ``git_diff.patch`` in the same folder gets ``git diff HEAD``, cut at
        1 MiB with a note line when larger; a clean checkout has no patch (one left by an
        earlier attempt of the run is removed). When the working directory is not in a git
        checkout, or ``git`` is not on ``PATH``, nothing is written and nothing raised.
        See :func:`~orchestrator_fsm.git_state.read_git_state`.
        """
        state = read_git_state()
        if state is not None:
            write_git_state(state, Path(path))
        return state


def _save_plain_config(plain: dict[str, Any], target: Path) -> Path:
    """Write ``plain`` (:func:`redacted_config`'s) as ``save_config`` writes it."""
    text = yaml.dump(
        plain, Dumper=FastDumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    atomic_write_text(target, text)
    return target


# The package's own methods, as defined: a saver whose method is anything else (a
# subclass's, an instance's or a patched class attribute) is called as the protocol says.
_OWN_DUMP_GIT_INFO: Final = AuditSaver.dump_git_info
_OWN_SAVE_CONFIG: Final = AuditSaver.save_config


def _is_own(saver: object, name: str, method: object) -> bool:
    return getattr(getattr(saver, name, None), "__func__", None) is method


def write_git_state(state: GitState, path: Path) -> None:
    """Write ``state`` to ``path`` (``git_info.txt``) and its patch beside it, atomically."""
    patch_file = path.parent / GIT_DIFF_FILE
    if state.patch:
        atomic_write_bytes(patch_file, state.patch)
    elif state.patch is not None:  # nothing changed: no empty file that looks like a record
        patch_file.unlink(missing_ok=True)
    atomic_write_text(path, state.info_text())


def _config_on_disk(path: Path) -> Any:
    # An injected saver's config.yaml: what it wrote is what the bundle describes.
    from orchestrator_fsm.config.recipe import load_trusted_yaml

    try:
        return load_trusted_yaml(path.read_bytes())
    except (OSError, yaml.YAMLError):
        return None


def _requirements_on_disk(path: Path) -> list[str]:
    # An injected saver that hands back nothing: its file, else the listing now.
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return requirement_lines()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def step(run: RunContext) -> None:
    """Phase 5: the resolved config, the installed distributions, the git state and
    the rerun bundle (``reports/rerun.json``).

    The audit saver is called as ``save_config(data=cfg, yaml_path=...)``,
    ``dump_requirements(path)`` and ``dump_git_info(path)``. What the package's saver
    hands back is used as it is; where an injected saver hands back nothing, what it
    left on disk is read. Files written stay on rollback, like the run directory.
    """
    paths = run.require_paths()
    saver = run.deps.audit_saver
    config_path = paths.get_config_path()
    requirements_path = paths.reports / REQUIREMENTS_FILE
    git_info_path = paths.reports / GIT_INFO_FILE
    # The package's own git read runs its gits while the config and the listing are
    # written and fsynced, rather than after them; an injected or overriding saver's
    # dump_git_info is called as the protocol says.
    pending = start_git_read() if _is_own(saver, "dump_git_info", _OWN_DUMP_GIT_INFO) else None
    config: dict[str, Any] | None = None
    # What an earlier attempt wrote here is kept before this attempt writes over it.
    keep_earlier_attempt(run)
    try:
        if _is_own(saver, "save_config", _OWN_SAVE_CONFIG):
            # The package's saver: the config it writes is the one recorded, made plain
            # and redacted once.
            config = redacted_config(run.cfg)
            _save_plain_config(config, config_path)
        else:
            saver.save_config(data=run.cfg, yaml_path=config_path)
        listed = saver.dump_requirements(requirements_path)
        if pending is None:
            git = saver.dump_git_info(git_info_path)
        else:
            git, pending = pending.finish(), None
            if git is not None:
                write_git_state(git, git_info_path)
    finally:
        if pending is not None:
            pending.close()
    if config is None:
        config = redacted_config(run.cfg) if isinstance(saver, AuditSaver) else None
    manifest = Manifest(
        config=config if config is not None else _config_on_disk(config_path),
        requirements=tuple(
            listed if listed is not None else _requirements_on_disk(requirements_path)
        ),
        git=git if git is not None else read_recorded_git_state(paths.reports),
    )
    run.manifest = manifest
    write_bundle(
        run,
        config=manifest.config,
        git=manifest.git,
        requirements=manifest.requirements,
        invocation=record_invocation(),
    )
