"""``RootOrchestrator``: the reference API, driving the lifecycle machine.

The orchestrator holds the injected dependencies and turns each step name of the
transition table into a call of one of them. Each step also captures what it is
about to change in the process (RNG-related flags, thread counts, environment
variables, logging configuration) and registers the matching undo, so rollback and
cleanup leave the process as they found it. Seeded RNG *state* is the exception: the
point of a run is that its generators stay seeded after ``__enter__``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from orchestrator_fsm._process import EnvSnapshot, LoggerSnapshot
from orchestrator_fsm.distributed import get_local_rank, get_rank, get_world_size
from orchestrator_fsm.errors import DeviceError, InfrastructureError, LifecycleError
from orchestrator_fsm.lifecycle.journal import RunJournal
from orchestrator_fsm.lifecycle.machine import LifecycleMachine, TransitionRecord, Undo
from orchestrator_fsm.lifecycle.table import TERMINAL_STATES, LifecycleState
from orchestrator_fsm.phases.determinism import DeterminismState, SeedTree, set_seed
from orchestrator_fsm.phases.device import to_device_obj
from orchestrator_fsm.phases.filesystem import RunPaths, setup_static_directories
from orchestrator_fsm.phases.guarding import InfrastructureManager
from orchestrator_fsm.phases.logging import Logger
from orchestrator_fsm.phases.manifest import AuditSaver, record_invocation
from orchestrator_fsm.phases.report import Reporter
from orchestrator_fsm.phases.runtime import (
    RuntimeState,
    apply_cpu_threads,
    configure_system_libraries,
)
from orchestrator_fsm.phases.timing import TimeTracker

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.protocols import (
        AuditSaverProtocol,
        InfraManagerProtocol,
        ReporterProtocol,
        TimeTrackerProtocol,
    )

__all__ = ["LOGGER_NAME", "RootOrchestrator"]

#: The package's logger: the run's console and file handlers are attached here.
LOGGER_NAME = "orchestrator_fsm"

_log = logging.getLogger(LOGGER_NAME)


class _Restorable(Protocol):
    def restore(self) -> None: ...


def _restoring(state: _Restorable, work: Callable[[], None]) -> Undo:
    """Run ``work`` and return the undo that puts back ``state`` (captured before it)
    and every environment variable ``work`` set, changed or removed. If ``work``
    raises, the undo runs at once: a step that fails leaves nothing behind."""
    env_before = dict(os.environ)

    def undo() -> None:
        try:
            state.restore()
        finally:
            EnvSnapshot.changes_since(env_before).restore()

    try:
        work()
    except BaseException:
        undo()
        raise
    return undo


def _status_for(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        # sys.exit() from a pipeline: a clean exit code is a completed run
        return "completed" if exc.code in (None, 0) else "failed"
    return "failed" if isinstance(exc, Exception) else "interrupted"


def _error_summary(exc: BaseException, step: str) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc), "step": step}


class RootOrchestrator:
    """Runs an experiment's lifecycle: seed, configure, provision, log, persist, guard,
    resolve the device, report, and clean up, as one state machine.

    Use it as a context manager::

        with RootOrchestrator(cfg) as orch:
            device = orch.get_device()
            orch.log_environment_report()
            ...  # train, writing under orch.paths

    or drive ``orch.machine`` step by step. Every dependency can be injected; the
    defaults are this package's own phase implementations. Only rank 0 provisions the
    run directory, logs to it, persists the manifest and takes the lock; other ranks
    seed, configure and resolve their device. An orchestrator is single-use.
    """

    def __init__(
        self,
        cfg: Config,
        infra_manager: InfraManagerProtocol | None = None,
        reporter: ReporterProtocol | None = None,
        time_tracker: TimeTrackerProtocol | None = None,
        audit_saver: AuditSaverProtocol | None = None,
        log_initializer: Callable[..., Any] | None = None,
        seed_setter: Callable[..., Any] | None = None,
        thread_applier: Callable[..., Any] | None = None,
        system_configurator: Callable[..., Any] | None = None,
        static_dir_setup: Callable[..., Any] | None = None,
        device_resolver: Callable[..., Any] | None = None,
        rank: int | None = None,
        local_rank: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.rank: int = get_rank() if rank is None else rank
        self.local_rank: int = get_local_rank() if local_rank is None else local_rank
        self.world_size: int = max(get_world_size(), self.rank + 1)
        self.is_main_process: bool = self.rank == 0

        self.infra: InfraManagerProtocol = infra_manager or InfrastructureManager()
        self.reporter: ReporterProtocol = reporter or Reporter()
        self.time_tracker: TimeTrackerProtocol = time_tracker or TimeTracker()
        self._audit_saver: AuditSaverProtocol = audit_saver or AuditSaver()
        self._log_initializer = log_initializer or Logger.setup
        self._seed_setter = seed_setter or set_seed
        self._thread_applier = thread_applier or partial(
            apply_cpu_threads, cpu_threads=cfg.hardware.cpu_threads
        )
        self._system_configurator = system_configurator or configure_system_libraries
        self._static_dir_setup = static_dir_setup or setup_static_directories
        self._device_resolver = device_resolver or to_device_obj

        self.repro_mode: bool = cfg.hardware.use_deterministic_algorithms
        self.warn_only_mode: bool = cfg.hardware.deterministic_warn_only
        self.num_workers: int = cfg.hardware.effective_num_workers

        self.paths: RunPaths | None = None
        self.run_logger: logging.Logger | None = None
        self._applied_threads = 0
        self._device: torch.device | None = None
        self._seed_tree: SeedTree | None = None
        self._journal: RunJournal | None = None
        self._unjournaled: list[TransitionRecord] = []
        # Why the run ended, when it did not simply complete: (status, error summary).
        self._outcome: tuple[str, dict[str, str]] | None = None

        self.machine = LifecycleMachine(
            {
                step: self._watched(step, work)
                for step, work in {
                    "seed": self._seed,
                    "configure_runtime": self._configure_runtime,
                    "provision": self._provision,
                    "init_logging": self._init_logging,
                    "persist_manifest": self._persist_manifest,
                    "acquire_lock": self._acquire_lock,
                    "resolve_device": self._resolve_device,
                    "report": self._report,
                }.items()
            }
            | {"cleanup": self._announce_end},
            is_main_process=self.is_main_process,
            rank=self.rank,
            listeners=[self._on_transition],
            logger=_log,
        )

    # -- the reference API ------------------------------------------------------------

    @property
    def state(self) -> LifecycleState:
        """The lifecycle state the run is in now."""
        return self.machine.state

    @property
    def applied_threads(self) -> int:
        """The intra-op thread count phase 2 applied (0 before it ran)."""
        return self._applied_threads

    @property
    def seed_tree(self) -> SeedTree:
        """Seeds derived from ``training.seed`` for each purpose, rank and worker."""
        if self._seed_tree is None:
            self._seed_tree = SeedTree(self.cfg.training.seed, self.rank, self.world_size)
        return self._seed_tree

    def __enter__(self) -> RootOrchestrator:
        try:
            self.time_tracker.start()
            self.initialize_core_services()
        except BaseException:
            self.time_tracker.stop()
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Literal[False]:
        self.time_tracker.stop()
        if exc_val is not None and self._outcome is None:
            status = _status_for(exc_val)
            if status != "completed":
                self._outcome = (status, _error_summary(exc_val, "pipeline"))
        self.cleanup()
        return False

    def initialize_core_services(self) -> RunPaths | None:
        """Run every step up to READY; at or past READY, return ``paths`` and do nothing.

        Raises ``LifecycleError`` once the run has been cleaned up or has failed.
        """
        if self.machine.is_terminal:
            raise LifecycleError(
                f"cannot initialize: the run is {self.machine.state.value} and a "
                "RootOrchestrator is single-use; create a new one"
            )
        self.machine.run_until(LifecycleState.READY)
        return self.paths

    def log_environment_report(self) -> None:
        """Phase 7, the READY -> REPORTED step. Anywhere else (before READY, a second
        time, after cleanup) it does nothing."""
        if self.machine.state is LifecycleState.READY:
            self.machine.advance()

    def cleanup(self) -> None:
        """Release the lock, write the final status, close the run's log handlers and
        restore the process state; a no-op once the run has ended."""
        if not self.machine.is_terminal:
            self.machine.cleanup()

    def get_device(self) -> torch.device:
        """The resolved compute device (resolved on first use if needed)."""
        if self._device is None:
            self._device = self._call_device_resolver()
        return self._device

    # -- steps: each does its work and returns its undo ---------------------------------

    def _seed(self) -> Undo:
        return _restoring(DeterminismState.capture(), self._apply_seed)

    def _apply_seed(self) -> None:
        self._seed_setter(
            self.cfg.training.seed, strict=self.repro_mode, warn_only=self.warn_only_mode
        )

    def _configure_runtime(self) -> Undo:
        return _restoring(RuntimeState.capture(), self._apply_runtime)

    def _apply_runtime(self) -> None:
        self._applied_threads = int(self._thread_applier(self.num_workers))
        self._system_configurator()

    def _provision(self) -> None:
        self._static_dir_setup()
        paths = RunPaths.create(
            output_dir=self.cfg.telemetry.output_dir,
            dataset=self.cfg.dataset.name,
            architecture=self.cfg.architecture.name,
            config_hash=self.cfg.config_hash(),
        )
        self.paths = paths
        journal = RunJournal(paths.root, paths.run_id, rank=self.rank, world_size=self.world_size)
        started = self.machine.history[0].started_at if self.machine.history else None
        journal.start(started_at=started)
        for record in self._unjournaled:
            journal.append(record)
        self._unjournaled.clear()
        self._journal = journal
        # The run directory is never removed on rollback: a failed run stays auditable.

    def _init_logging(self) -> Undo:
        assert self.paths is not None  # provision ran: the table orders it first
        before = LoggerSnapshot.capture(LOGGER_NAME, "")
        try:
            self.run_logger = self._log_initializer(
                name=LOGGER_NAME, log_dir=self.paths.logs, level=self.cfg.telemetry.log_level
            )
        except BaseException:
            before.restore()
            raise
        return before.restore

    def _persist_manifest(self) -> None:
        assert self.paths is not None
        reports = self.paths.reports
        self._audit_saver.save_config(self.cfg, self.paths.get_config_path())
        self._audit_saver.dump_requirements(reports / "requirements.txt")
        self._audit_saver.dump_git_info(reports / "git_info.txt")
        if self._journal is not None:
            self._journal.update(**record_invocation())

    def _acquire_lock(self) -> Undo:
        assert self.paths is not None
        bind_run = getattr(self.infra, "bind_run", None)
        if callable(bind_run):
            bind_run(self.paths.run_id)
        try:
            self.infra.prepare_environment(self.cfg, logger=self.run_logger)
        except InfrastructureError:
            raise
        except Exception as exc:
            raise InfrastructureError(
                f"could not guard the run (project {self.cfg.hardware.project_name!r}): {exc}"
            ) from exc
        return self._release_lock

    def _release_lock(self) -> None:
        self.infra.release_resources(self.cfg, logger=self.run_logger or _log)

    def _resolve_device(self) -> None:
        self._device = self._call_device_resolver()
        if self._journal is not None:
            self._journal.update(state=LifecycleState.READY.value, device=str(self._device))

    def _call_device_resolver(self) -> torch.device:
        requested = self.cfg.hardware.device
        try:
            device = self._device_resolver(device_str=requested, local_rank=self.local_rank)
        except DeviceError:
            raise
        except Exception as exc:
            raise DeviceError(
                f"device resolution failed (hardware.device is {requested!r}, "
                f"local rank {self.local_rank}): {exc}"
            ) from exc
        return device if isinstance(device, torch.device) else torch.device(device)

    def _report(self) -> None:
        if not self.is_main_process:
            return  # rank 0 alone reports; other ranks only move to REPORTED
        assert self.paths is not None
        self.reporter.log_initial_status(
            logger_instance=self.run_logger or _log,
            cfg=self.cfg,
            paths=self.paths,
            device=self.get_device(),
            applied_threads=self._applied_threads,
            num_workers=self.num_workers,
        )

    def _announce_end(self) -> None:
        if self.run_logger is None or self.paths is None:
            return
        status = self._outcome[0] if self._outcome else "completed"
        self.run_logger.info(
            "run %s %s after %.2fs; outputs in %s",
            self.paths.run_id,
            status,
            self.time_tracker.elapsed_seconds,
            self.paths.root,
        )

    # -- journal --------------------------------------------------------------------------

    def _on_transition(self, record: TransitionRecord) -> None:
        record_phase = getattr(self.time_tracker, "record", None)
        if record.ok and callable(record_phase):
            record_phase(record.step, record.duration_s)
        if self._journal is None:
            if self.is_main_process:
                self._unjournaled.append(record)
            return
        self._journal.append(record)
        if record.dest in TERMINAL_STATES and record.step in ("cleanup", "rollback"):
            status, error = self._outcome or ("completed", None)
            self._journal.finish(
                status,
                state=record.dest.value,
                error=error,
                elapsed_s=round(self.time_tracker.elapsed_seconds, 6),
            )

    def _watched(self, step: str, work: Callable[[], Undo | None]) -> Callable[[], Undo | None]:
        """``work``, remembering the first error it raises as the run's outcome."""

        def run_step() -> Undo | None:
            try:
                return work()
            except BaseException as exc:
                if self._outcome is None:
                    self._outcome = (_status_for(exc), _error_summary(exc, step))
                raise

        return run_step
