"""The run record: ``run.json`` and ``lifecycle.jsonl``, written by one owner and read back.

``RunRecorder`` listens to a ``LifecycleMachine`` and is the only writer of both files.
It starts the record when the run directory appears (back-filling the transitions made
before from ``machine.history``), appends every later transition, and finishes the
record exactly once, when the machine reaches CLEANED or FAILED, with a status derived
from the machine alone: the exception that ended the run (``machine.ended_by``) and the
step it ended in. ``run.json`` is rewritten atomically (temporary file, fsync, rename).

``read_run(root)`` gives back a frozen ``RunRecord``; ``infer_status`` is the one place
that decides a ``running`` record whose process is gone is ``crashed``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from orchestrator_fsm._fs import append_whole, atomic_write_text
from orchestrator_fsm._system import boot_id, pid_exists, process_start_ticks
from orchestrator_fsm._version import __version__
from orchestrator_fsm.lifecycle.machine import TransitionRecord
from orchestrator_fsm.lifecycle.table import MACHINE_STEPS, TERMINAL_STATES
from orchestrator_fsm.redaction import redact_argv, redact_secrets

if TYPE_CHECKING:
    from orchestrator_fsm.lifecycle.machine import LifecycleMachine
    from orchestrator_fsm.phases.context import RunContext

__all__ = [
    "JOURNAL_FILE",
    "PIPELINE_STEP",
    "RESERVE_FILE",
    "RUN_FILE",
    "STATUSES",
    "ErrorSummary",
    "RunRecord",
    "RunRecorder",
    "infer_status",
    "outcome_of",
    "read_run",
    "run_status",
    "stale_after",
    "status_for",
]

RUN_FILE: Final = "run.json"
JOURNAL_FILE: Final = "lifecycle.jsonl"

#: Every status ``run.json`` can hold; readers add ``crashed`` (see :func:`infer_status`).
STATUSES: Final = ("running", "completed", "failed", "interrupted")

#: The name errors raised by the caller's own work (the with-block) are recorded under.
PIPELINE_STEP: Final = "pipeline"


@attrs.frozen
class ErrorSummary:
    """The error that ended a run: its type, its message and the step it came from."""

    type: str
    message: str
    step: str

    @classmethod
    def of(cls, exc: BaseException, step: str) -> ErrorSummary:
        return cls(type=type(exc).__name__, message=str(exc), step=step)

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message, "step": self.step}

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


def status_for(exc: BaseException | None) -> str:
    """The final status of a run ended by ``exc`` (None: it ran to the end)."""
    if exc is None:
        return "completed"
    if isinstance(exc, SystemExit):
        # sys.exit() from a pipeline: a clean exit code is a completed run.
        return "completed" if exc.code in (None, 0) else "failed"
    return "failed" if isinstance(exc, Exception) else "interrupted"


def outcome_of(machine: LifecycleMachine) -> tuple[str, ErrorSummary | None]:
    """The run's status and error summary as the machine knows them now."""
    exc = machine.ended_by
    status = status_for(exc)
    if exc is None or status == "completed":
        return status, None
    return status, ErrorSummary.of(exc, machine.ended_in or PIPELINE_STEP)


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _optional_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _timestamp(value: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value is not None else None
    except ValueError:
        return None


@attrs.frozen
class RunRecord:
    """What one run directory says about its run (``run.json`` + ``lifecycle.jsonl``).

    ``status`` is what the record holds; :attr:`effective_status` is what to show
    (``crashed`` for a ``running`` run whose process is gone). Keys of ``run.json``
    this version does not know are kept in ``extra``.
    """

    run_id: str
    root: Path
    status: str
    state: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    rank: int | None = None
    world_size: int | None = None
    pid: int | None = None
    host: str | None = None
    boot_id: str | None = None
    process_start_ticks: int | None = None
    heartbeat_at: datetime | None = None
    heartbeat_s: float | None = None
    device: str | None = None
    error: ErrorSummary | None = None
    phases: Mapping[str, float] = attrs.field(factory=dict)
    elapsed_s: float | None = None
    argv: tuple[str, ...] = ()
    cwd: str | None = None
    entry_point: str | None = None
    entry_module: str | None = None
    python: str | None = None
    package_version: str | None = None
    transitions: tuple[TransitionRecord, ...] = ()
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def effective_status(self) -> str:
        return infer_status(self)

    @property
    def duration_s(self) -> float | None:
        """Wall time from start to end as the timestamps say; None while unfinished."""
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        root: Path,
        transitions: tuple[TransitionRecord, ...] = (),
    ) -> RunRecord:
        """The record of ``run.json``'s ``data``; missing or mistyped fields become None."""
        error = data.get("error")
        summary = None
        if isinstance(error, Mapping):
            summary = ErrorSummary(
                type=str(error.get("type") or "Error"),
                message=str(error.get("message") or ""),
                step=str(error.get("step") or "?"),
            )
        phases = data.get("phases")
        argv = data.get("argv")
        known = {field.name for field in attrs.fields(cls)}
        return cls(
            run_id=str(data.get("run_id") or Path(root).name),
            root=Path(root),
            status=str(data.get("status") or "unknown"),
            state=_optional_str(data.get("state")),
            started_at=_timestamp(data.get("started_at")),
            ended_at=_timestamp(data.get("ended_at")),
            rank=_optional_int(data.get("rank")),
            world_size=_optional_int(data.get("world_size")),
            pid=_optional_int(data.get("pid")),
            host=_optional_str(data.get("host")),
            boot_id=_optional_str(data.get("boot_id")),
            process_start_ticks=_optional_int(data.get("process_start_ticks")),
            heartbeat_at=_timestamp(data.get("heartbeat_at")),
            heartbeat_s=_optional_float(data.get("heartbeat_s")),
            device=_optional_str(data.get("device")),
            error=summary,
            phases={
                str(k): float(v)
                for k, v in (phases.items() if isinstance(phases, Mapping) else ())
                if _optional_float(v) is not None
            },
            elapsed_s=_optional_float(data.get("elapsed_s")),
            argv=tuple(str(a) for a in argv) if isinstance(argv, list) else (),
            cwd=_optional_str(data.get("cwd")),
            entry_point=_optional_str(data.get("entry_point")),
            entry_module=_optional_str(data.get("entry_module")),
            python=_optional_str(data.get("python")),
            package_version=_optional_str(data.get("package_version")),
            transitions=transitions,
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        """The ``run.json`` form of the record (without the transitions)."""
        data: dict[str, Any] = dict(self.extra)
        data.update(
            run_id=self.run_id,
            root=str(self.root),
            status=self.status,
            state=self.state,
            started_at=None if self.started_at is None else self.started_at.isoformat(),
            ended_at=None if self.ended_at is None else self.ended_at.isoformat(),
            rank=self.rank,
            world_size=self.world_size,
            pid=self.pid,
            host=self.host,
            boot_id=self.boot_id,
            process_start_ticks=self.process_start_ticks,
            heartbeat_at=None if self.heartbeat_at is None else self.heartbeat_at.isoformat(),
            heartbeat_s=self.heartbeat_s,
            device=self.device,
            error=None if self.error is None else self.error.to_json(),
            phases=dict(self.phases),
            elapsed_s=self.elapsed_s,
            argv=list(self.argv),
            cwd=self.cwd,
            entry_point=self.entry_point,
            entry_module=self.entry_module,
            python=self.python,
            package_version=self.package_version,
        )
        return data


def stale_after(heartbeat_s: float) -> float:
    """Seconds without a heartbeat after which a ``running`` run counts as crashed."""
    return 3 * heartbeat_s + 60.0


def infer_status(record: RunRecord, now: datetime | None = None) -> str:
    """The status to show for ``record``: ``crashed`` when it says ``running`` but its
    process is gone.

    On the host that ran it, the process identity decides: the machine rebooted since
    (another boot id), no process has the pid, or the process with that pid is a later
    one (another start time) means crashed; a live process with the recorded identity
    means running, however old its heartbeat (it may be suspended). Elsewhere (a
    shared file system read from another node), or when nothing can be probed, the
    heartbeat decides: none for longer than :func:`stale_after` its interval means
    crashed. ``now`` is the time to judge the heartbeat by (default: the current time).
    """
    if record.status != "running":
        return record.status
    if record.host == socket.gethostname():
        current_boot = boot_id()
        if None not in (record.boot_id, current_boot) and record.boot_id != current_boot:
            return "crashed"
        alive = pid_exists(record.pid)
        if alive is False:
            return "crashed"
        if record.pid is not None and record.process_start_ticks is not None:
            started = process_start_ticks(record.pid)
            if started is not None:
                return "running" if started == record.process_start_ticks else "crashed"
        if alive is True:
            return "running"
    if record.heartbeat_at is not None and record.heartbeat_s:
        now = now or datetime.now(timezone.utc)
        if (now - record.heartbeat_at).total_seconds() > stale_after(record.heartbeat_s):
            return "crashed"
    return "running"


def run_status(root: Path | str) -> str:
    """The true status of the run directory ``root``: ``completed``, ``failed``,
    ``interrupted``, ``running`` or ``crashed`` (see :func:`infer_status`).

    Raises ``FileNotFoundError`` when ``root`` holds no ``run.json`` and ``ValueError``
    when it is not a JSON object.
    """
    return infer_status(read_run(root))


def _read_transitions(root: Path) -> tuple[TransitionRecord, ...]:
    # A torn last line (the writer died mid-append) or a foreign line is skipped.
    path = root / JOURNAL_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ()
    records: list[TransitionRecord] = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
            records.append(TransitionRecord.from_json(data))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return tuple(records)


def read_run(root: Path | str) -> RunRecord:
    """The record of the run directory ``root``.

    Raises ``FileNotFoundError`` when ``root`` holds no ``run.json`` and ``ValueError``
    naming the file when it is not a JSON object.
    """
    root = Path(root)
    path = root / RUN_FILE
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return RunRecord.from_json(data, root, _read_transitions(root))


#: Space kept aside in the run directory for the record's last writes (see RunRecorder).
RESERVE_FILE: Final = ".run.json.reserve"
_MIN_RESERVE_BYTES = 64 * 1024


def _say_on_stderr(line: str) -> None:
    # The record's writer cannot log about its own failures: the log file may sit on
    # the same full disk. One plain line on stderr reaches the user whatever happened.
    try:
        sys.stderr.write(f"orchestrator-fsm: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


class RunRecorder:
    """The one writer of a run's ``run.json`` and ``lifecycle.jsonl``.

    :meth:`start` writes the first record as soon as the run directory exists (if it
    cannot, the run must not go on: the directory would have no record); from then
    on the recorder follows the machine's transitions (:meth:`observe`) and finishes
    the record exactly once. What it writes is a :class:`RunRecord` in its ``to_json``
    form, so ``read_run`` reads back exactly the shape written. Ranks other than 0
    never write. ``elapsed`` reports the run's wall time for the final record.

    Faults while writing never cut the record short or leave half a file: ``run.json``
    is replaced atomically (a failed write keeps the previous complete file), a failed
    append to the journal is cut back, and each failure is one line on stderr. Space
    for the last writes is kept aside at start (:data:`RESERVE_FILE`) and handed back
    just before them, so a run that fills its disk still ends with its true status.
    A daemon thread refreshes ``heartbeat_at`` every ``heartbeat_s`` seconds (0: none)
    until the record is final.
    """

    def __init__(
        self,
        run: RunContext,
        elapsed: Any,
        *,
        heartbeat_s: float = 0.0,
        report: Callable[[str], None] = _say_on_stderr,
    ) -> None:
        self._run = run
        self._elapsed = elapsed
        self._heartbeat_s = heartbeat_s
        self._report = report
        self._machine: LifecycleMachine | None = None
        self._record: RunRecord | None = None
        self._journaled = 0
        self._finished = False
        self._reported: set[str] = set()
        self._written = True
        self._lock = threading.RLock()
        self._stop_beating = threading.Event()
        self._beater: threading.Thread | None = None

    @property
    def record(self) -> RunRecord | None:
        """The record as this process knows it (None before the run directory exists)."""
        return self._record

    @property
    def on_disk(self) -> bool:
        """Whether ``run.json`` holds :attr:`record` (False after a failed write)."""
        return self._written

    def observe(self, machine: LifecycleMachine) -> None:
        """Listen to ``machine`` from now on."""
        self._machine = machine
        machine.add_listener(self._on_transition)

    def start(self) -> None:
        """Write the first record of the run directory just made, keep space aside for
        the last writes, and start the heartbeat. Raises the ``OSError`` of a failed
        write; nothing of the recorder's is left in the directory then."""
        paths = self._run.paths
        if paths is None or self._record is not None or not self._run.is_main_process:
            return
        record = self._first_record(paths.root, paths.run_id)
        text = _run_json_text(record)
        try:
            atomic_write_text(paths.root / RUN_FILE, text)
            _fill(paths.root / RESERVE_FILE, max(_MIN_RESERVE_BYTES, 8 * len(text)))
        except BaseException as exc:
            for name in (RUN_FILE, RESERVE_FILE):
                with contextlib.suppress(OSError):
                    os.unlink(paths.root / name)
            if isinstance(exc, OSError):
                raise type(exc)(
                    exc.errno, f"cannot write the run record ({exc.strerror})", str(paths.root)
                ) from exc
            raise
        self._record = record
        if self._heartbeat_s > 0:
            self._beater = threading.Thread(
                target=self._beat, name="orchestrator-fsm-heartbeat", daemon=True
            )
            self._beater.start()

    def announce_end(self) -> None:
        """Log how the run ended on the run logger (the machine's cleanup hook)."""
        run = self._run
        if run.logger is None or run.paths is None or self._machine is None:
            return
        status, _ = outcome_of(self._machine)
        run.logger.info(
            "run %s %s after %.2fs; outputs in %s",
            run.paths.run_id,
            status,
            self._elapsed_s(),
            run.paths.root,
        )

    def _elapsed_s(self) -> float:
        return round(float(self._elapsed()), 6)

    def _on_transition(self, record: TransitionRecord) -> None:
        if self._machine is None or self._finished or self._record is None:
            return
        final = record.dest in TERMINAL_STATES and record.step in MACHINE_STEPS
        if final:
            self._stop_heartbeat()
            self._release_reserve()
        with self._lock:
            before = self._record
            phases = self._journal_new_transitions(before.root, dict(before.phases))
            moved = record.ok and record.step not in MACHINE_STEPS
            device = None if self._run.device is None else str(self._run.device)
            self._record = attrs.evolve(
                before,
                phases=phases,
                state=record.dest.value if moved else before.state,
                device=device or before.device,
            )
            # run.json is rewritten (fsync + rename) only when a reader would learn
            # something new: where the run runs, how it ended. Per-step progress is in
            # lifecycle.jsonl; liveness is the heartbeat's.
            if final:
                self._finish(record)
            elif self._record.device != before.device:
                self._update()

    def _first_record(self, root: Path, run_id: str) -> RunRecord:
        from orchestrator_fsm.phases.manifest import record_invocation

        assert self._machine is not None
        history = self._machine.history
        invocation = record_invocation()
        known = {field.name for field in attrs.fields(RunRecord)}
        pid = os.getpid()
        now = datetime.now(timezone.utc)
        return RunRecord(
            run_id=run_id,
            root=root,
            status="running",
            started_at=history[0].started_at if history else now,
            rank=self._run.rank,
            world_size=self._run.world_size,
            pid=pid,
            host=socket.gethostname(),
            boot_id=boot_id(),
            process_start_ticks=process_start_ticks(pid),
            heartbeat_at=now if self._heartbeat_s > 0 else None,
            heartbeat_s=self._heartbeat_s if self._heartbeat_s > 0 else None,
            argv=tuple(redact_argv(invocation["argv"])),
            cwd=invocation["cwd"],
            entry_point=invocation["entry_point"],
            entry_module=invocation["entry_module"],
            python=invocation["python"],
            package_version=__version__,
            extra={key: value for key, value in invocation.items() if key not in known},
        )

    def _journal_new_transitions(self, root: Path, phases: dict[str, float]) -> dict[str, float]:
        """Append what the machine did since the last call; ``phases`` plus its durations."""
        assert self._machine is not None
        history = self._machine.history
        fresh = history[self._journaled :]
        if not fresh:
            return phases
        lines = []
        for item in fresh:
            line = redact_secrets(dict(item.to_json(), pid=os.getpid()))
            lines.append(json.dumps(line, sort_keys=True))
        try:
            append_whole(root / JOURNAL_FILE, "\n".join(lines) + "\n")
        except OSError as exc:
            # Kept for the next append: the journal stays a prefix of the history.
            self._report_once("journal", f"could not append to {root / JOURNAL_FILE} ({exc})")
        else:
            self._journaled = len(history)
        for item in fresh:
            if item.ok:
                phases[item.step] = round(phases.get(item.step, 0.0) + item.duration_s, 6)
        return phases

    def _finish(self, record: TransitionRecord) -> None:
        assert self._machine is not None and self._record is not None
        status, error = outcome_of(self._machine)
        self._finished = True
        self._record = attrs.evolve(
            self._record,
            status=status,
            state=record.dest.value,
            ended_at=datetime.now(timezone.utc),
            error=error,
            elapsed_s=self._elapsed_s(),
        )
        failure = self._write()
        if failure is not None:
            self._report(
                f"the run ended {status}, but {self._record.root / RUN_FILE} could not be "
                f"updated ({failure}); it still holds the record written before"
            )

    def _write(self) -> OSError | None:
        """Replace ``run.json`` with the record; the error when that failed."""
        assert self._record is not None
        try:
            atomic_write_text(self._record.root / RUN_FILE, _run_json_text(self._record))
        except OSError as exc:
            self._written = False
            return exc
        self._written = True
        return None

    def _update(self) -> None:
        # A record written while the run goes on: on failure the previous one stands
        # (the final write will try again); said once, not at every heartbeat.
        failure = self._write()
        if failure is not None:
            path = self._record.root / RUN_FILE if self._record else RUN_FILE
            self._report_once(
                "update", f"could not update {path} ({failure}); it keeps the previous record"
            )

    def _report_once(self, kind: str, line: str) -> None:
        if kind not in self._reported:
            self._reported.add(kind)
            self._report(line)

    def _beat(self) -> None:
        while not self._stop_beating.wait(self._heartbeat_s):
            with self._lock:
                if self._finished or self._record is None:
                    return
                self._record = attrs.evolve(self._record, heartbeat_at=datetime.now(timezone.utc))
                self._update()

    def _stop_heartbeat(self) -> None:
        self._stop_beating.set()
        beater, self._beater = self._beater, None
        if beater is not None and beater is not threading.current_thread():
            beater.join()

    def _release_reserve(self) -> None:
        if self._record is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._record.root / RESERVE_FILE)


def _run_json_text(record: RunRecord) -> str:
    return (
        json.dumps(redact_secrets(record.to_json()), indent=2, sort_keys=True, default=str) + "\n"
    )


def _fill(path: Path, size: int) -> None:
    """Create ``path`` holding ``size`` bytes of real disk space (raises when there is none)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        block = bytes(min(size, 64 * 1024))
        left = size
        while left > 0:
            left -= os.write(fd, block[:left])
        os.fsync(fd)
    finally:
        os.close(fd)
