"""Phase 3, filesystem: the run directory and the shared static directories.

``RunPaths.create`` (its home is :mod:`orchestrator_fsm.layout`) makes one fresh
directory per run under the configured output directory, named
``YYYYMMDD-HHMMSS-<dataset>-<architecture>-<hash6>-<rand4>``, and its sub-folders
``logs/ reports/ checkpoints/ figures/ exports/ database/``. The directory is claimed
with an exclusive ``os.mkdir``, so two launches with identical configs in the same
second still get distinct directories and an existing directory is never reused. The
random part comes from :mod:`secrets`, never from ``random``, NumPy or torch, so
creating a run consumes none of the user's seeded random streams.

A run directory is never deleted, not even by a rollback after a failed step: a run
that failed half-way stays on disk for auditing, with whatever it managed to record.

``setup_static_directories`` creates the per-user cache directory shared by all runs
(``default_cache_dir()``) and its ``locks/`` sub-folder, where the run lock lives.
``restarted_run`` finds the directory a resumed or restarted run continues in.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import os
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

from orchestrator_fsm._fs import slugify
from orchestrator_fsm.errors import InfrastructureError
from orchestrator_fsm.layout import RUN_SUBDIRECTORIES, RunPaths, job_entry_file
from orchestrator_fsm.lifecycle.job_index import job_key, read_job_entry
from orchestrator_fsm.status import RUNNING

if TYPE_CHECKING:
    from orchestrator_fsm.run_context import RunContext

__all__ = [
    "default_cache_dir",
    "default_lock_dir",
    "restarted_run",
    "setup_static_directories",
    "step",
]

CACHE_DIR_NAME: Final = "orchestrator-fsm"


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


def _resumable(run: RunContext, root: Path) -> RunPaths:
    """``root`` as the run to continue, after checking it may be: it holds a record,
    that run is not live, and it ran this config (unless ``force_resume``)."""
    from orchestrator_fsm.lifecycle.record import read_run

    try:
        paths = RunPaths.from_root(root)
        record = read_run(paths.root)
    except (OSError, ValueError) as exc:
        raise InfrastructureError(f"cannot resume {root}: {exc}") from exc
    status = record.effective_status
    if status == RUNNING:
        raise InfrastructureError(
            f"cannot resume {paths.root}: its run is still running (pid {record.pid} on "
            f"{record.host})"
        )
    ours = run.cfg.config_hash()
    if record.config_hash not in (None, ours) and not run.force_resume:
        raise InfrastructureError(
            f"cannot resume {paths.root}: it ran another config (hash "
            f"{record.config_hash[:12]}, this one {ours[:12]}); resume with force to "
            "continue it anyway"
        )
    return paths


def restarted_run(run: RunContext) -> RunPaths | None:
    """The run directory to continue as a new attempt: the one the caller named
    (``resume``), or the one an earlier attempt of this job made when this is a restart
    (torchrun restart, SLURM requeue) of a job whose entry names one; else None.

    Raises ``InfrastructureError`` when the named directory cannot be resumed.
    """
    if run.resume_from is not None:
        return _resumable(run, run.resume_from)
    key = job_key(run.launch, run.cfg.config_hash())
    if key is None or run.launch.restart_count == 0:
        return None
    entry = read_job_entry(job_entry_file(run.cfg.telemetry.output_dir, key))
    if entry is None or entry.root is None or entry.config_hash != run.cfg.config_hash():
        return None
    try:
        return RunPaths.from_root(entry.root)
    except OSError:
        return None  # removed since: this attempt starts a fresh directory


def step(run: RunContext) -> None:
    """Phase 3: the shared static directories, then this run's fresh directory with
    its first record in it.

    No undo: a run directory is never removed, so a failed run stays auditable. The
    run knows its directory, and its record is started, the moment the directory is
    claimed, so a failure (or a signal) while the sub-folders are made is recorded in
    it. The one exception is a directory whose record cannot be written (a full disk):
    it is removed again at once, so no run directory is left without a ``run.json``.
    A restart or requeue of a job reopens the job's directory instead (see
    :func:`restarted_run`), as the run's next attempt.
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
