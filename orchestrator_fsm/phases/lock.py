"""Phase 6, the run lock: an OS-level lock that refuses a conflicting launch.

By default the lock guards one *run*: two launches of the same config (seed included)
into the same output directory conflict, different seeds and different recipes do
not (see :func:`run_identity`). ``infrastructure.lock.scope: project`` widens it to
every run of ``hardware.project_name``, and ``infrastructure.lock.path`` names the
file outright (one lock per GPU, per machine, per anything).

``InfrastructureManager.prepare_environment`` takes an exclusive ``flock`` on the run's
lock file (``fcntl.flock`` on POSIX, the call portalocker makes there, so a tool that
locks the file with portalocker sees it; portalocker elsewhere) and writes who holds it
into the file;
``release_resources`` is its undo. The kernel drops the lock when the holder's file
descriptor is closed, so a crashed or ``kill -9``-ed run frees it at once: there is
no stale-lock detection to get wrong, nothing is ever killed, and the lock file is
never deleted (a waiting process may already have it open; unlinking it would let two
runs lock two different files of the same name).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from orchestrator_fsm._fs import slugify
from orchestrator_fsm._system import pid_exists
from orchestrator_fsm.errors import InfrastructureError, LockContendedError
from orchestrator_fsm.layout import output_root

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.lifecycle.machine import Undo
    from orchestrator_fsm.run_context import RunContext

__all__ = [
    "InfrastructureManager",
    "RunBinding",
    "read_lock_holder",
    "resolve_lock_path",
    "run_identity",
    "step",
]

_log = logging.getLogger(__name__)

_BACKOFF_START_S = 0.01
_BACKOFF_CAP_S = 0.5
# Holder info is a few hundred bytes; anything longer is not ours.
_HOLDER_READ_LIMIT = 64 * 1024
# How often the lock file may turn out to have been replaced under us (someone deleted
# or renamed it) before we give up; each time we simply reopen the path.
_MAX_REOPENS = 10


if sys.platform != "win32":
    import fcntl

    def _try_lock(handle: BinaryIO) -> bool:
        """Take the exclusive lock without waiting: False when another holds it; any
        other failure raises ``OSError``."""
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(handle: BinaryIO) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

else:  # pragma: no cover - Windows has no flock; portalocker locks a byte range there

    def _try_lock(handle: BinaryIO) -> bool:
        import portalocker

        try:
            portalocker.lock(
                handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
            )
        except portalocker.AlreadyLocked:
            return False
        except portalocker.LockException as exc:
            raise OSError(str(exc)) from exc
        return True

    def _unlock(handle: BinaryIO) -> None:
        import portalocker

        try:
            portalocker.unlock(handle)
        except portalocker.LockException as exc:
            raise OSError(str(exc)) from exc


def run_identity(cfg: Config) -> str:
    """SHA-256 (hex) of what makes two launches *the same run*.

    That is the whole config (pipeline sections, ``training.seed``, ``hardware``) but
    the ``telemetry`` and ``infrastructure`` sections, which change how a run is
    observed and guarded rather than what it computes, plus the output directory as
    :func:`~orchestrator_fsm.layout.output_root` normalises it (the one the run
    directory is made in), so one recipe written to two output directories makes two
    runs, plus the SLURM array task (``SLURM_ARRAY_TASK_ID``) when there is one: the
    tasks of an array are separate runs of one config, and must not refuse each other
    whether or not they land on the same node.
    """
    config = cfg.dump_serialized()
    for section in ("telemetry", "infrastructure"):
        config.pop(section, None)
    output_dir = output_root(cfg.telemetry.output_dir)
    identity: dict[str, object] = {"config": config, "output_dir": str(output_dir)}
    array_task = os.environ.get("SLURM_ARRAY_TASK_ID", "").strip()
    if array_task:
        # Only when set, so the identity (and lock file name) of every other launch
        # stays what it was.
        identity["slurm_array_task"] = array_task
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def resolve_lock_path(cfg: Config) -> Path:
    """The lock file a run of ``cfg`` guards itself with.

    ``infrastructure.lock.path`` when set; else, in
    :func:`orchestrator_fsm.phases.filesystem.default_lock_dir`, with
    ``infrastructure.lock.scope`` ``run`` (the default)
    ``<project slug>.run-<16 hex of run_identity(cfg)>.lock``, and with ``project``
    ``<project slug>.lock`` (the slug of ``hardware.project_name``).
    """
    lock_cfg = cfg.infrastructure.lock
    if lock_cfg.path is not None:
        return Path(lock_cfg.path).expanduser()
    from orchestrator_fsm.phases.filesystem import default_lock_dir

    project_slug = slugify(cfg.hardware.project_name, max_length=80, fallback="project")
    if lock_cfg.scope == "project":
        return default_lock_dir() / f"{project_slug}.lock"
    return default_lock_dir() / f"{project_slug}.run-{run_identity(cfg)[:16]}.lock"


def read_lock_holder(path: Path) -> dict[str, object] | None:
    """What the current (or last) holder wrote into the lock file at ``path``.

    Returns ``None`` when the file does not exist, is empty, or does not hold a JSON
    object (a holder that is still writing, or a file that is not ours). Reading takes
    no lock, so the answer may be stale by the time the caller looks at it.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_HOLDER_READ_LIMIT)
    except OSError:
        return None
    return _parse_holder(raw)


def _parse_holder(raw: bytes) -> dict[str, object] | None:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe_holder(path: Path, holder: dict[str, object] | None, raw_size: int) -> str:
    if holder is None:
        if raw_size < 0:
            why = "the lock file could not be read"
        elif raw_size == 0:
            why = "the lock file is empty"
        else:
            why = "the lock file does not hold valid holder JSON"
        return (
            f"another process holds {path} (holder unknown: {why}; the holder may be "
            "starting up, or the file was written by something else)"
        )
    pid = holder.get("pid", "?")
    host = holder.get("host", "?")
    run_id = holder.get("run_id") or "not bound yet"
    since = holder.get("since", "?")
    text = f"pid {pid} on host {host} (run {run_id}, since {since}) holds {path}"
    if pid == os.getpid() and host == socket.gethostname():
        text += " - that is this process, through another InfrastructureManager"
    elif host == socket.gethostname() and pid_exists(pid) is False:
        # flock belongs to the open file description, which a forked child inherits.
        text += (
            f"; pid {pid} is no longer running, so a process it forked still has the lock file open"
        )
    return text


def _waiting_line(path: Path, holder: dict[str, object] | None, size: int, timeout_s: float) -> str:
    """``waiting for run <id> (pid P on host H) since S to release <path> ...``."""
    limit = "until it is free" if math.isinf(timeout_s) else f"up to {timeout_s:g}s"
    if holder is None:
        return f"waiting {limit} for the run lock: {_describe_holder(path, holder, size)}"
    run_id = holder.get("run_id") or "(run id not bound yet)"
    return (
        f"waiting for run {run_id} (pid {holder.get('pid', '?')} on host "
        f"{holder.get('host', '?')}) since {holder.get('since', '?')} to release the run "
        f"lock {path}; waiting {limit}"
    )


class InfrastructureManager:
    """Holds the run lock from phase 6 until cleanup.

    The lock is an exclusive, non-blocking ``flock`` on the lock file (see
    :func:`resolve_lock_path`). ``infrastructure.lock.timeout_s`` of 0 fails at once when
    another run holds it; a positive value retries with exponential backoff (10 ms
    doubling up to 0.5 s) until that many seconds have passed on the monotonic clock.
    Contention raises :class:`LockContendedError` naming the holder. ``clock`` and
    ``sleep`` are injectable for tests; callers normally pass nothing.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._handle: BinaryIO | None = None
        self._lock_path: Path | None = None
        self._run_id: str | None = None
        self._project: str | None = None
        self._since: str | None = None

    @property
    def held(self) -> bool:
        """True while this manager holds the lock."""
        return self._handle is not None

    @property
    def lock_path(self) -> Path | None:
        """The lock file this manager guarded with, or ``None`` (not yet, or disabled)."""
        return self._lock_path

    @property
    def run_id(self) -> str | None:
        """The run id recorded by :meth:`bind_run`, if any."""
        return self._run_id

    def bind_run(self, run_id: str) -> None:
        """Record ``run_id`` as the holder's run in the lock file.

        Meant to be called before :meth:`prepare_environment`; called while the lock is
        held, it rewrites the holder info at once.
        """
        self._run_id = run_id
        if self._handle is not None and self._lock_path is not None:
            self._write_holder_info(self._handle, self._lock_path, _log)

    def prepare_environment(self, cfg: Config, logger: logging.Logger | None = None) -> None:
        """Take the run lock, or raise.

        Raises :class:`LockContendedError` (with ``.holder``) when another run holds it
        past ``infrastructure.lock.timeout_s``, and :class:`InfrastructureError` naming
        the path when the lock file cannot be created or locked for another reason.
        Does nothing when this manager already holds the lock, and nothing but a log
        line when ``infrastructure.lock.enabled`` is false.
        """
        log = logger if logger is not None else _log
        if self._handle is not None:
            log.debug("run lock %s is already held by this manager", self._lock_path)
            return
        if cfg.hardware.allow_process_kill:
            log.warning(
                "hardware.allow_process_kill is set; it is accepted for compatibility and "
                "ignored: orchestrator-fsm never kills other processes"
            )
        lock_cfg = cfg.infrastructure.lock
        if not lock_cfg.enabled:
            log.info(
                "run lock disabled (infrastructure.lock.enabled is false): concurrent runs "
                "of project %r are not kept apart",
                cfg.hardware.project_name,
            )
            return

        timeout_s = float(lock_cfg.timeout_s)
        if math.isnan(timeout_s) or timeout_s < 0:
            raise InfrastructureError(
                f"infrastructure.lock.timeout_s must be >= 0 (0 = fail at once), "
                f"got {lock_cfg.timeout_s!r}"
            )
        path = resolve_lock_path(cfg)
        self._project = cfg.hardware.project_name
        started = self._clock()
        self._handle = handle = self._acquire(path, timeout_s, log)
        try:
            self._lock_path = path
            self._since = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self._write_holder_info(handle, path, log)
            log.info(
                "acquired run lock %s (pid %d, waited %.2fs)",
                path,
                os.getpid(),
                max(0.0, self._clock() - started),
            )
        except BaseException:
            # Interrupted after locking: nobody will call release for a lock that
            # prepare_environment never reported as taken.
            self.release_resources(cfg, logger=log)
            raise

    def release_resources(self, cfg: Config, logger: logging.Logger | None = None) -> None:
        """Release the lock taken by :meth:`prepare_environment`.

        Clears the holder info, unlocks and closes the file; never deletes it and never
        touches another process. A second call (or a call without a lock) does nothing.
        Problems are logged, not raised: closing the descriptor releases the ``flock``
        whatever else failed.
        """
        log = logger if logger is not None else _log
        handle, self._handle = self._handle, None
        if handle is None:
            return
        path = self._lock_path
        try:
            handle.seek(0)
            handle.truncate(0)
            handle.flush()
        except OSError as exc:
            log.warning("could not clear the holder info in %s: %s", path, exc)
        try:
            _unlock(handle)
        except OSError as exc:
            log.warning("could not unlock %s (closing it releases the lock): %s", path, exc)
        try:
            handle.close()
        except OSError as exc:
            log.warning("error closing lock file %s: %s", path, exc)
        log.info("released run lock %s", path)

    def _acquire(self, path: Path, timeout_s: float, log: logging.Logger) -> BinaryIO:
        deadline = self._clock() + timeout_s
        for _ in range(_MAX_REOPENS):
            handle = _open_lock_file(path)
            try:
                self._lock_before(deadline, handle, path, timeout_s, log)
                if _still_at_path(handle, path):
                    return handle
            except BaseException:
                handle.close()
                raise
            # Someone removed or replaced the file while we waited for it, so the lock we
            # hold guards nothing. Closing drops it; then lock whatever is at the path now.
            log.warning("run lock file %s was replaced while waiting; reopening it", path)
            handle.close()
        raise InfrastructureError(
            f"the run lock file {path} kept being replaced while locking it "
            f"({_MAX_REOPENS} attempts); is another tool deleting it?"
        )

    def _lock_before(
        self,
        deadline: float,
        handle: BinaryIO,
        path: Path,
        timeout_s: float,
        log: logging.Logger,
    ) -> None:
        delay = _BACKOFF_START_S
        announced_wait = False
        while True:
            try:
                if _try_lock(handle):
                    return
            except OSError as exc:
                raise InfrastructureError(
                    f"could not lock the run lock file {path}: {exc}"
                ) from exc
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise self._contended(handle, path, timeout_s)
            if not announced_wait:
                holder, size = _read_holder_through(handle)
                log.warning("%s", _waiting_line(path, holder, size, timeout_s))
                announced_wait = True
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, _BACKOFF_CAP_S)

    def _contended(self, handle: BinaryIO, path: Path, timeout_s: float) -> LockContendedError:
        holder, size = _read_holder_through(handle)
        waited = "timeout_s is 0" if timeout_s == 0 else f"waited {timeout_s:g}s"
        message = (
            f"the run lock is taken ({waited}): {_describe_holder(path, holder, size)}. "
            "Wait for that run to finish, raise infrastructure.lock.timeout_s to wait for "
            "it, or change what the lock guards (infrastructure.lock.scope / "
            "infrastructure.lock.path, hardware.project_name)"
        )
        return LockContendedError(message, holder=holder)

    def _write_holder_info(self, handle: BinaryIO, path: Path, log: logging.Logger) -> None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_id": self._run_id,
            "since": self._since,
            "project": self._project,
        }
        payload = (json.dumps(info, sort_keys=True) + "\n").encode("utf-8")
        # Written in place through the locked descriptor: an atomic rename would put a
        # new inode at the path, and a lock on the old one would no longer guard it.
        try:
            handle.seek(0)
            handle.truncate(0)
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            # The lock itself is held; only the diagnostics for contenders are missing.
            log.warning("holding run lock %s but could not record the holder: %s", path, exc)


def _open_lock_file(path: Path) -> BinaryIO:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise InfrastructureError(
            f"could not create or open the run lock file {path}: {exc.strerror or exc}"
        ) from exc
    return os.fdopen(fd, "r+b")


def _read_holder_through(handle: BinaryIO) -> tuple[dict[str, object] | None, int]:
    """Read the holder info through our own (unlocked) descriptor.

    Reading through the descriptor we already have, rather than opening the path
    again, keeps us looking at the very file we failed to lock.
    """
    try:
        handle.seek(0)
        raw = handle.read(_HOLDER_READ_LIMIT)
    except OSError:
        return None, -1
    return _parse_holder(raw), len(raw)


def _still_at_path(handle: BinaryIO, path: Path) -> bool:
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    ours = os.fstat(handle.fileno())
    return (ours.st_dev, ours.st_ino) == (at_path.st_dev, at_path.st_ino)


@runtime_checkable
class RunBinding(Protocol):
    """An infrastructure manager that can name the run holding its lock."""

    def bind_run(self, run_id: str) -> None: ...


def step(run: RunContext) -> Undo:
    """Phase 6: ``infra.prepare_environment(cfg, logger=...)`` takes the run lock.

    A manager that supports :class:`RunBinding` is told the run id first. Any failure
    other than an ``InfrastructureError`` is raised as one (the original is the
    cause), after ``release_resources``: a manager that failed that way (or was
    interrupted) may have taken the lock already. The undo is
    ``infra.release_resources(cfg, logger=...)``; when it fails the failure is logged
    as an error on the run logger ("Failed to release system lock") and re-raised, so
    the lifecycle records it and still runs the other undos.
    """
    paths = run.require_paths()
    infra = run.deps.infra

    def release_lock() -> None:
        log = run.log
        try:
            infra.release_resources(run.cfg, logger=log)
        except Exception as exc:
            log.error("Failed to release system lock: %s", exc)
            raise

    if isinstance(infra, RunBinding):
        infra.bind_run(paths.run_id)
    try:
        infra.prepare_environment(run.cfg, logger=run.logger)
    except InfrastructureError:
        raise  # the manager's own "not taken" (contention, an unusable lock file)
    except BaseException as exc:
        # The manager may have taken the lock before it raised, or an interrupt may
        # have landed after it did: this step registers no undo, so release now, or the
        # lock would outlive the run (and block the next run of this process).
        with contextlib.suppress(Exception):
            infra.release_resources(run.cfg, logger=run.log)
        if not isinstance(exc, Exception):
            raise
        raise InfrastructureError(
            f"could not guard the run (project {run.cfg.hardware.project_name!r}): {exc}"
        ) from exc
    return release_lock
