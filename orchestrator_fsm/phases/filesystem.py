"""Phase 3, filesystem: the run directory and the shared static directories.

``RunPaths.create`` makes one fresh directory per run under the configured output
directory, named ``YYYYMMDD-HHMMSS-<dataset>-<architecture>-<hash6>-<rand4>``, and its
sub-folders ``logs/ reports/ checkpoints/ figures/ exports/ database/``. The directory
is claimed with an exclusive ``os.mkdir``, so two launches with identical configs in
the same second still get distinct directories and an existing directory is never
reused. The random part comes from :mod:`secrets`, never from ``random``, NumPy or
torch, so creating a run consumes none of the user's seeded random streams.

A run directory is never deleted, not even by a rollback after a failed step: a run
that failed half-way stays on disk for auditing, with whatever it managed to record.

``setup_static_directories`` creates the per-user cache directory shared by all runs
(``default_cache_dir()``) and its ``locks/`` sub-folder, where the run lock lives.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs

from orchestrator_fsm._fs import slugify
from orchestrator_fsm.layout import CONFIG_FILE, RUN_SUBDIRECTORIES, output_root
from orchestrator_fsm.redaction import redact_url

if TYPE_CHECKING:
    from orchestrator_fsm.phases.context import RunContext

__all__ = [
    "RunPaths",
    "default_cache_dir",
    "default_lock_dir",
    "setup_static_directories",
    "step",
]

CACHE_DIR_NAME: Final = "orchestrator-fsm"

# A name slug longer than this would make directory names unwieldy (and, with two of
# them, could approach the 255-byte limit of common file systems).
_NAME_SLUG_MAX: Final = 40
_HASH_CHARS: Final = 6
_SUFFIX_BYTES: Final = 2
# Each attempt collides with probability (runs started in the same second) / 65536;
# 32 consecutive collisions mean something other than chance is going on.
_MAX_CREATE_ATTEMPTS: Final = 32
_HEX_DIGITS: Final = frozenset("0123456789abcdef")


def _random_suffix() -> str:
    """Four hex digits from the OS's CSPRNG; never touches the user's seeded generators."""
    return secrets.token_hex(_SUFFIX_BYTES)


def _utc_timestamp(now: datetime | None) -> str:
    if now is None:
        now = datetime.now(timezone.utc)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    else:
        now = now.astimezone(timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S")


def _hash_prefix(config_hash: str) -> str:
    prefix = str(config_hash).strip().lower()[:_HASH_CHARS]
    if len(prefix) < _HASH_CHARS or not set(prefix) <= _HEX_DIGITS:
        raise ValueError(
            f"config_hash must start with at least {_HASH_CHARS} hexadecimal digits, "
            f"got {config_hash!r}"
        )
    return prefix


def _ensure_output_dir(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR,
            "the output directory for runs exists but is not a directory",
            str(output_dir),
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(
            exc.errno,
            f"cannot create the output directory for runs ({exc.strerror})",
            str(output_dir),
        ) from exc


def _claim_run_directory(output_dir: Path, prefix: str) -> Path:
    """Create ``output_dir/<prefix>-<rand4>`` exclusively and return it."""
    tried: list[str] = []
    for _ in range(_MAX_CREATE_ATTEMPTS):
        candidate = output_dir / f"{prefix}-{_random_suffix()}"
        try:
            os.mkdir(candidate)
        except FileExistsError:
            # Someone else (another launch this same second) owns this name: draw again.
            tried.append(candidate.name)
            continue
        except OSError as exc:
            raise type(exc)(
                exc.errno,
                f"cannot create a run directory in the output directory {output_dir} "
                f"({exc.strerror})",
                str(candidate),
            ) from exc
        return candidate
    raise FileExistsError(
        errno.EEXIST,
        f"could not claim a fresh run directory in {output_dir} after "
        f"{_MAX_CREATE_ATTEMPTS} attempts: every random suffix was taken "
        f"(last tried: {', '.join(tried[-3:])})",
        str(output_dir),
    )


@attrs.frozen
class RunPaths:
    """The directory layout of one run.

    ``root`` is ``<output_dir>/<run_id>``; the other paths are its sub-folders. Make a
    new run with :meth:`create`, or describe an existing one with :meth:`from_root`.
    """

    run_id: str
    root: Path
    logs: Path
    reports: Path
    checkpoints: Path
    figures: Path
    exports: Path
    database: Path

    @classmethod
    def from_root(cls, root: Path | str) -> RunPaths:
        """The layout of the existing run directory ``root`` (its name is the run id).

        Raises ``FileNotFoundError`` (or ``NotADirectoryError``) naming ``root`` when it
        is not an existing directory. Sub-folders are not checked: a run that failed
        early may lack some of them.
        """
        root = Path(root).absolute()
        if not root.exists():
            raise FileNotFoundError(errno.ENOENT, "the run directory does not exist", str(root))
        if not root.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, "the run directory path is not a directory", str(root)
            )
        return cls._layout(root)

    @classmethod
    def create(
        cls,
        output_dir: Path | str,
        dataset: str,
        architecture: str,
        config_hash: str,
        *,
        now: datetime | None = None,
        on_claimed: Callable[[RunPaths], None] | None = None,
    ) -> RunPaths:
        """Create a fresh run directory with all its sub-folders and return its layout.

        ``output_dir`` is created (with parents) when missing. The run id is
        ``YYYYMMDD-HHMMSS-<dataset>-<architecture>-<hash6>-<rand4>``: the UTC time
        (``now``, default the current time; a naive ``now`` is taken as UTC), the two
        names (any URL password dropped) reduced to ``[a-z0-9_-]``, the first six hex
        digits of ``config_hash`` and four random hex digits. When the name is taken,
        another suffix is drawn; after 32 taken names ``FileExistsError`` is raised.
        Cost does not depend on how many runs ``output_dir`` already holds.

        ``on_claimed`` is called with the layout as soon as the directory is claimed,
        before the sub-folders are made: whatever stops the run from then on, the
        caller knows the directory exists (and can record the run in it).

        Raises ``ValueError`` when ``config_hash`` does not start with six hex digits,
        and an ``OSError`` naming the path when ``output_dir`` is a file or is not
        writable.
        """
        output_dir = output_root(output_dir)
        prefix = "-".join(
            (
                _utc_timestamp(now),
                slugify(redact_url(dataset), max_length=_NAME_SLUG_MAX, fallback="dataset"),
                slugify(redact_url(architecture), max_length=_NAME_SLUG_MAX, fallback="model"),
                _hash_prefix(config_hash),
            )
        )
        _ensure_output_dir(output_dir)
        root = _claim_run_directory(output_dir, prefix)
        paths = cls._layout(root)
        if on_claimed is not None:
            on_claimed(paths)
        for name in RUN_SUBDIRECTORIES:
            os.mkdir(root / name)
        return paths

    @classmethod
    def _layout(cls, root: Path) -> RunPaths:
        return cls(
            run_id=root.name,
            root=root,
            **{name: root / name for name in RUN_SUBDIRECTORIES},
        )

    def get_config_path(self) -> Path:
        """Where the run's resolved config is saved: ``reports/config.yaml``."""
        return self.reports / CONFIG_FILE


def _user_tag() -> str:
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        return str(getuid())
    return slugify(getpass.getuser(), fallback="user")


def _nearest_existing(path: Path) -> Path | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def _is_usable(path: Path) -> bool:
    """Whether ``path`` exists as a writable directory or could be created as one."""
    existing = _nearest_existing(path)
    return existing is not None and existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def _fallback_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"{CACHE_DIR_NAME}-{_user_tag()}"


def default_cache_dir() -> Path:
    """The per-user directory shared by all runs (the default home of the run lock).

    ``$XDG_CACHE_HOME/orchestrator-fsm`` when that variable holds an absolute path,
    else ``~/.cache/orchestrator-fsm``; when that place cannot be written (or there is
    no home directory), ``<tempdir>/orchestrator-fsm-<uid>``. Nothing is created.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base: Path | None = None
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and Path(xdg).is_absolute():
        base = Path(xdg)
    else:
        try:
            base = Path.home() / ".cache"
        except (RuntimeError, KeyError):
            base = None
    if base is not None:
        preferred = base / CACHE_DIR_NAME
        if _is_usable(preferred):
            return preferred
    return _fallback_cache_dir()


def default_lock_dir() -> Path:
    """The ``locks/`` folder of :func:`default_cache_dir`, where run locks live by default."""
    return default_cache_dir() / "locks"


def _check_private_fallback(path: Path) -> None:
    # The fallback lives in a world-writable temp dir: refuse one planted by another user.
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or info.st_uid != getuid():
        raise PermissionError(
            errno.EPERM,
            f"the fallback cache directory is expected to be a directory owned by uid "
            f"{getuid()}, found one owned by uid {info.st_uid}"
            + (" (a symbolic link)" if stat.S_ISLNK(info.st_mode) else ""),
            str(path),
        )


def setup_static_directories() -> None:
    """Create :func:`default_cache_dir` and its ``locks/`` sub-folder; idempotent.

    Raises an ``OSError`` naming the path when a directory cannot be created.
    """
    cache_dir = default_cache_dir()
    is_fallback = cache_dir == _fallback_cache_dir()
    cache_dir.mkdir(mode=0o700 if is_fallback else 0o777, parents=True, exist_ok=True)
    if is_fallback:
        _check_private_fallback(cache_dir)
    (cache_dir / "locks").mkdir(exist_ok=True)


def _discard_fresh(paths: RunPaths) -> None:
    # Only what create() made, and only while it is still empty.
    for name in RUN_SUBDIRECTORIES:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(paths.root / name)
    os.rmdir(paths.root)


def step(run: RunContext) -> None:
    """Phase 3: the shared static directories, then this run's fresh directory with
    its first record in it.

    No undo: a run directory is never removed, so a failed run stays auditable. The
    run knows its directory, and its record is started, the moment the directory is
    claimed, so a failure (or a signal) while the sub-folders are made is recorded in
    it. The one exception is a directory whose record cannot be written (a full disk):
    it is removed again at once, so no run directory is left without a ``run.json``.
    A restart or requeue of a job reopens the job's directory instead (see
    ``phases/joining.py``), as the run's next attempt.
    """

    def claimed(paths: RunPaths) -> None:
        run.paths = paths
        try:
            run.start_record()
        except BaseException:
            run.paths = None
            with contextlib.suppress(OSError):
                _discard_fresh(paths)
            raise

    from orchestrator_fsm.phases.joining import restarted_run

    run.deps.static_dir_setup()
    earlier = restarted_run(run)
    if earlier is not None:
        # A restart or requeue of the job: the same directory, a new attempt in it.
        run.paths, run.resumed = earlier, True
        run.start_record()
        return
    RunPaths.create(
        output_dir=run.cfg.telemetry.output_dir,
        dataset=run.cfg.dataset.name,
        architecture=run.cfg.architecture.name,
        config_hash=run.cfg.config_hash(),
        on_claimed=claimed,
    )
