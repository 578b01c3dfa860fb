"""``RootOrchestrator``: the reference API over the lifecycle machine.

This module holds the public API, the default of each injectable dependency and the
wiring of the machine: the transition table (``lifecycle/table.py``) says what runs in
which order, ``phases/steps.py`` says which phase function does each step, and
``lifecycle/record.py`` keeps the run record. Each step's work and undo live in the
module of its phase.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from orchestrator_fsm.checkpoints import DEFAULT_KEEP, CheckpointStore
from orchestrator_fsm.distributed import Launch, current_launch
from orchestrator_fsm.entry import entry_module, entry_search_path, resolve_callable
from orchestrator_fsm.errors import EntryPointError, LifecycleError, RunInterrupted
from orchestrator_fsm.lifecycle.callbacks import CONFIG_FIELD, Callback, SignalCallbacks
from orchestrator_fsm.lifecycle.job_index import job_key
from orchestrator_fsm.lifecycle.machine import (
    LifecycleMachine,
    RecordListener,
    TransitionRecord,
    Undo,
    describe_error,
)
from orchestrator_fsm.lifecycle.record import AttemptInfo
from orchestrator_fsm.lifecycle.recorder import RunRecorder
from orchestrator_fsm.lifecycle.signals import SignalGuard
from orchestrator_fsm.lifecycle.table import CLEANUP_STEP, LifecycleState
from orchestrator_fsm.observers import Observers, configured_observers
from orchestrator_fsm.phases.bundle import record_loaded_libraries
from orchestrator_fsm.phases.determinism import changed_settings, set_seed, worker_init_fn
from orchestrator_fsm.phases.device import resolve_device, to_device_obj
from orchestrator_fsm.phases.filesystem import setup_static_directories
from orchestrator_fsm.phases.lock import InfrastructureManager
from orchestrator_fsm.phases.logging import Logger
from orchestrator_fsm.phases.manifest import AuditSaver
from orchestrator_fsm.phases.report import Reporter
from orchestrator_fsm.phases.runtime import apply_cpu_threads, configure_system_libraries
from orchestrator_fsm.phases.steps import STEPS, PhaseStep
from orchestrator_fsm.phases.timing import TimeTracker
from orchestrator_fsm.run_context import (
    RERUN_OF_ENV,
    RUN_DIR_FILE_ENV,
    Dependencies,
    RunContext,
)
from orchestrator_fsm.run_log import LOGGER_NAME
from orchestrator_fsm.seeds import SeedTree

if TYPE_CHECKING:
    import torch
    from rich.console import Console

    from orchestrator_fsm.config import Config
    from orchestrator_fsm.layout import RunPaths
    from orchestrator_fsm.lifecycle.record import RunRecord
    from orchestrator_fsm.progress_bar import ProgressBar
    from orchestrator_fsm.protocols import (
        AuditSaverProtocol,
        InfraManagerProtocol,
        ReporterProtocol,
        TimeTrackerProtocol,
    )

__all__ = ["LOGGER_NAME", "Entry", "RootOrchestrator", "SignalCallback", "current_run"]

_T = TypeVar("_T")

#: A pipeline: called once with the orchestrator, at READY; what it returns is ignored.
Entry = Callable[["RootOrchestrator"], object]
#: A checkpoint callback: called with the orchestrator and the signal's number.
SignalCallback = Callback["RootOrchestrator"]


def _given_or(value: _T | None, default: Callable[[], _T]) -> _T:
    # "Not given" is None only: an injected object whose truth value is False is used.
    return default() if value is None else value


@runtime_checkable
class _RecordsPhases(Protocol):
    """A time tracker that also keeps per-step durations (the default one does)."""

    def record(self, step: str, duration_s: float) -> None: ...


def _phase_timer(tracker: TimeTrackerProtocol) -> RecordListener | None:
    if not isinstance(tracker, _RecordsPhases):
        return None
    records = tracker

    def on_transition(record: TransitionRecord) -> None:
        if record.ok:
            records.record(record.step, record.duration_s)

    return on_transition


def _in_exit(frame: FrameType | None) -> bool:
    """Whether a signal arriving with ``frame`` innermost lands in the run's own exit
    (``__exit__`` and the cleanup it calls, an override's included)."""
    while frame is not None:
        if frame.f_code in _EXIT_CODE:
            return True
        frame = frame.f_back
    return False


# The runs live in this process, innermost last: one is added by __enter__ and removed
# by its cleanup. current_run() reads it; nothing else does.
_LIVE_RUNS: list[RootOrchestrator] = []


def current_run() -> RootOrchestrator:
    """**(beyond)** The run live in this process (the innermost, should runs nest): the
    orchestrator of ``orchestrator-fsm run`` (its ``--script``, ``--entry`` or recipe's
    entry), or of a ``with RootOrchestrator(cfg)`` block, from its ``__enter__`` until its
    cleanup. A script reaches it from anywhere, without passing it down. Raises
    ``LifecycleError`` when no run is live (the script was started without
    ``orchestrator-fsm run``, or the run has ended)."""
    if not _LIVE_RUNS:
        raise LifecycleError(
            "no run is live in this process: start the script with `orchestrator-fsm run "
            "--script SCRIPT`, or call current_run() inside `with RootOrchestrator(cfg):`"
        )
    return _LIVE_RUNS[-1]


def _script_of_this_process() -> tuple[str | None, tuple[str, ...] | None]:
    """The script this process runs (``python train.py ARGS``): its resolved path and its
    arguments; ``(None, None)`` for ``python -m``, ``-c``, a console command or a shell."""
    main = sys.modules.get("__main__")
    script = sys.argv[0] if sys.argv else ""
    if getattr(main, "__spec__", None) is not None or not script.endswith(".py"):
        return None, None
    path = Path(script)
    if not path.is_file():
        return None, None
    return str(path.resolve()), tuple(sys.argv[1:])


def _configured_callback(cfg: Config, name: str, spec: str) -> SignalCallback:
    """The signal callback the recipe names ``spec`` for signal ``name``; a
    ``ConfigError`` at its field when it cannot be imported."""
    from orchestrator_fsm.config.problems import config_error
    from orchestrator_fsm.config.sections import DICT_SOURCE_LABEL

    try:
        # Looked up where --entry is: the working directory, or the file's own one.
        with entry_search_path(spec):
            found = resolve_callable(
                spec, named_by="signal callback", takes="the orchestrator and the signal number"
            )
    except EntryPointError as exc:
        label = str(cfg.source) if cfg.source is not None else DICT_SOURCE_LABEL
        source = None if cfg.source is None else label
        raise config_error(label, [(f"{CONFIG_FIELD}.{name}", str(exc))], source) from exc
    callback: SignalCallback = found
    return callback


class RootOrchestrator:
    """Runs an experiment's lifecycle: seed, configure, provision, log, persist, guard,
    resolve the device, report, and clean up, as one state machine.

    Use it as a context manager::

        with RootOrchestrator(cfg) as orch:
            device = orch.get_device()
            orch.log_environment_report()
            ...  # train, writing under orch.paths

    or drive ``orch.machine`` step by step. ``observers`` (see
    :mod:`orchestrator_fsm.observers`), after those of ``telemetry.observers``, are told
    what the run records as it records it. ``sweep`` (a sweep id and member number,
    given by ``run --multirun`` to its members) is recorded in ``run.json``; so is
    ``entry``, how the caller named the pipeline (the command line's ``--entry``, or
    ``--script``'s path with ``entry_argv`` its arguments; made from a script run as
    ``python train.py ARGS``, that script and its arguments), which also goes into the
    rerun bundle, and ``rerun_of`` (the run directory ``orchestrator-fsm rerun`` runs
    again). While it is live, :func:`current_run` returns it.
    Every dependency can be injected; the
    defaults are this package's own phase implementations. Only rank 0 creates the
    run directory, persists the manifest and takes the lock; other ranks join rank 0's
    directory, log to their own file in it and resolve their device. An orchestrator
    is single-use.
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
        *,
        signal_callbacks: Mapping[int | str, SignalCallback] | None = None,
        world_size: int | None = None,
        resume: str | os.PathLike[str] | None = None,
        force_resume: bool = False,
        observers: Iterable[object] = (),
        sweep: tuple[str, int] | None = None,
        entry: str | None = None,
        rerun_of: str | os.PathLike[str] | None = None,
        entry_argv: Iterable[str] | None = None,
    ) -> None:
        self.cfg = cfg
        entry_is_process = entry is None
        if entry is None:
            # Made from a user's script (not the command line): its path and arguments
            # are the entry, so that `orchestrator-fsm rerun` can run it again (and
            # tells it, through the environment, which run it reruns).
            entry, script_argv = _script_of_this_process()
            entry_is_process = entry is not None
            if entry_is_process and rerun_of is None:
                rerun_of = os.environ.get(RERUN_OF_ENV) or None
        else:
            script_argv = None if entry_argv is None else tuple(entry_argv)
        # Explicit rank, local_rank and world_size win over what the launcher (or an
        # initialised torch.distributed process group) says.
        self.launch: Launch = current_launch(
            rank=rank, local_rank=local_rank, world_size=world_size
        )
        self.rank: int = self.launch.rank
        self.local_rank: int = self.launch.local_rank
        self.world_size: int = self.launch.world_size
        self.is_main_process: bool = self.rank == 0
        # A rank above 0 that shares no job id, rendezvous or process group with a rank 0
        # cannot find its run directory: it takes the reference's shortcut instead.
        in_rank_0s_job = self.is_main_process or job_key(self.launch, cfg.config_hash()) is not None
        if not in_rank_0s_job:
            logging.getLogger(LOGGER_NAME).warning(
                "rank %d of %d shares no launcher job, rendezvous (MASTER_ADDR/MASTER_PORT) "
                "or process group with a rank 0: it runs without a run directory (paths is "
                "None) and logs to the console only",
                self.rank,
                self.world_size,
            )
        self.repro_mode: bool = cfg.hardware.use_deterministic_algorithms
        self.warn_only_mode: bool = cfg.hardware.deterministic_warn_only
        self.num_workers: int = cfg.hardware.effective_num_workers

        deps = Dependencies(
            infra=_given_or(infra_manager, InfrastructureManager),
            reporter=_given_or(reporter, Reporter),
            time_tracker=_given_or(time_tracker, TimeTracker),
            audit_saver=_given_or(audit_saver, AuditSaver),
            log_initializer=_given_or(log_initializer, lambda: Logger.setup),
            seed_setter=_given_or(seed_setter, lambda: set_seed),
            thread_applier=_given_or(
                thread_applier,
                lambda: partial(
                    apply_cpu_threads,
                    cpu_threads=cfg.hardware.cpu_threads,
                    ranks_on_node=self.launch.local_world_size,
                ),
            ),
            system_configurator=_given_or(system_configurator, lambda: configure_system_libraries),
            static_dir_setup=_given_or(static_dir_setup, lambda: setup_static_directories),
            device_resolver=_given_or(device_resolver, lambda: to_device_obj),
        )
        self.infra: InfraManagerProtocol = deps.infra
        self.reporter: ReporterProtocol = deps.reporter
        self.time_tracker: TimeTrackerProtocol = deps.time_tracker
        self._run = RunContext(
            cfg=cfg,
            deps=deps,
            rank=self.rank,
            local_rank=self.local_rank,
            world_size=self.world_size,
            seed_tree=SeedTree(cfg.training.seed, self.rank, self.world_size),
            launch=self.launch,
            resume_from=None if resume is None else Path(resume),
            force_resume=force_resume,
            sweep=sweep,
            entry=entry,
            entry_argv=script_argv,
            entry_is_process=entry_is_process,
            rerun_of=None if rerun_of is None else Path(rerun_of),
        )
        self._recorder = RunRecorder(
            self._run,
            lambda: self.time_tracker.elapsed_seconds,
            heartbeat_s=cfg.telemetry.heartbeat_s,
            listener=Observers([*configured_observers(cfg), *observers]),
            entry_module=entry_module(entry) if entry else None,
        )
        run = self._run
        run.start_record = self._recorder.start
        timer = _phase_timer(self.time_tracker)
        # Who started the time tracker: "with" (__enter__) or "steps" (the first step
        # of a step-by-step run, which cleanup then stops); None before either.
        self._timed_by: Literal["with", "steps"] | None = None
        self.machine = LifecycleMachine(
            {name: partial(self._timed_step, step, run) for name, step in STEPS.items()}
            | {CLEANUP_STEP: self._at_cleanup},
            is_main_process=self.is_main_process,
            in_rank_0s_job=in_rank_0s_job,
            rank=self.rank,
            listeners=[timer] if timer is not None else [],
            logger=logging.getLogger(LOGGER_NAME),
        )
        self._recorder.observe(self.machine)
        self._cleaning = False
        # What ends the run, for cleanup() while __enter__/__exit__ call it.
        self._ended_by: BaseException | None = None
        # The first SIGINT/SIGTERM/SIGHUP that reached the live run: the run ends by it
        # even when the user's code caught what it raised (see _end).
        self._stop: RunInterrupted | None = None
        self._signals = SignalGuard(
            on_held=self._on_held,
            defer=self.machine.defers_interrupt,
            on_stop=self._on_stop,
            exiting=_in_exit,
        )
        self._signal_callbacks: SignalCallbacks[RootOrchestrator] = SignalCallbacks(
            self,
            log=lambda: run.log,
            configured=cfg.infrastructure.signal_callbacks,
            resolve=partial(_configured_callback, cfg),
        )
        for key, callback in (signal_callbacks or {}).items():
            self._signal_callbacks.attach(key, callback)

    def _timed_step(self, step: PhaseStep, run: RunContext) -> Undo | None:
        # Step by step (machine.advance()), the run's time starts at its first step, as
        # __enter__ starts it for a with-block, so elapsed_s is never 0.
        if self._timed_by is None:
            self._timed_by = "steps"
            self.time_tracker.start()
        return step(run)

    def _at_cleanup(self) -> None:
        if self._timed_by == "steps":
            self.time_tracker.stop()
        # The native libraries are looked at last: CUDA's load at first use.
        record_loaded_libraries(self._run)
        self._note_determinism_changes()
        self._recorder.announce_end()
        self._tell_rerun()

    def _tell_rerun(self) -> None:
        """A run made from Python that ``orchestrator-fsm rerun`` started: write its
        directory to the file the rerun named (rank 0, once)."""
        target = os.environ.get(RUN_DIR_FILE_ENV)
        run = self._run
        if not target or not run.entry_is_process or not run.is_main_process:
            return
        if run.paths is None:
            return
        from orchestrator_fsm._fs import atomic_write_text

        try:
            atomic_write_text(Path(target), f"{run.paths.root}\n")
        except OSError as exc:
            logging.getLogger(LOGGER_NAME).warning("could not write %s (%s)", target, exc)

    def _note_determinism_changes(self) -> None:
        """What the program did to the seed and the determinism flags since phase 1:
        into the record, and one warning in the log."""
        applied = self._run.determinism_applied
        if applied is None:
            return
        changes = changed_settings(applied)
        if not changes:
            return
        self._recorder.note_determinism_changes(changes)
        logger = self._run.logger
        if logger is not None:
            logger.warning(
                "the program changed during the run: %s",
                ", ".join(f"{k} {v['applied']} -> {v['at_end']}" for k, v in changes.items()),
            )

    def _on_held(self, interrupt: BaseException) -> None:
        # A signal while cleaning up: the run ends interrupted, and ends now. One held
        # while an earlier interrupt unwinds the with-block changes nothing: that one
        # reaches cleanup as what ended the run.
        if self._cleaning:
            self.machine.note_interrupt(interrupt)
        self._recorder.stop_waiting()

    def _on_stop(self, interrupt: RunInterrupted) -> None:
        # A signal handler: only remembers (the first is what stopped the run).
        if self._stop is None:
            self._stop = interrupt

    # -- what the steps produced --------------------------------------------------------

    @property
    def paths(self) -> RunPaths | None:
        """The run directory's layout from phase 3 on (on every rank: the one rank 0
        made, which other ranks join); None before."""
        return self._run.paths

    @property
    def run_logger(self) -> logging.Logger | None:
        """The run's logger from phase 4 until cleanup (every rank writes its own log
        file); None otherwise."""
        return self._run.logger

    @property
    def record(self) -> RunRecord | None:
        """The run record as this process knows it, from phase 3 on (rank 0: run.json;
        another rank: its ``ranks/rank<N>.json``); None before. It is what the file
        holds unless writing that failed (a full disk), in which case this is the truth
        and the failure was reported."""
        return self._recorder.record

    @property
    def attempt(self) -> AttemptInfo | None:
        """Which attempt of the run this is, from phase 3 on (rank 0 and the ranks that
        joined it); None before. Its ``number`` counts from 1, ``restart_count`` is the
        launcher's, ``resumed`` says an earlier attempt made the run directory (so
        there may be a checkpoint to load), and ``previous_status`` /
        ``previous_reason`` say how the attempt before ended. See the README
        ("Ranks, nodes and restarts")."""
        record = self._recorder.record
        return None if record is None else AttemptInfo.of(record.attempts)

    @property
    def state(self) -> LifecycleState:
        """The lifecycle state the run is in now."""
        return self.machine.state

    @property
    def applied_threads(self) -> int:
        """The intra-op thread count phase 2 applied (0 before it ran)."""
        return self._run.applied_threads

    @property
    def seed_tree(self) -> SeedTree:
        """Seeds derived from ``training.seed`` for each purpose, rank and worker."""
        return self._run.seed_tree

    def loader_seeding(self, purpose: str = "dataloader") -> dict[str, Any]:
        """``generator`` and ``worker_init_fn`` for a ``DataLoader``, from the seed tree.

        ``DataLoader(dataset, shuffle=True, num_workers=2, **orch.loader_seeding())``
        gives the same batches on every run of the same recipe with the same number of
        workers: the generator (``seed_tree.generator(purpose)``, this rank's) draws the
        shuffled order and each worker's base seed, and :func:`worker_init_fn` seeds
        ``random`` and NumPy in each worker from that base seed. Give each loader its
        own ``purpose`` (``"train_loader"``, ``"val_loader"``).
        """
        return {"generator": self.seed_tree.generator(purpose), "worker_init_fn": worker_init_fn}

    # -- the reference API ------------------------------------------------------------

    def __enter__(self) -> RootOrchestrator:
        """Start the timer and call ``self.initialize_core_services()`` (an override in a
        subclass or on the instance is called); when that raises, ``self.cleanup()``
        runs before the error propagates."""
        # The recipe's signal callbacks are imported first: one that cannot be is a
        # ConfigError before anything has started.
        self._signal_callbacks.install()
        # SIGINT, SIGTERM and SIGHUP end the run as an interrupt until cleanup is done.
        self._signals.install()
        _LIVE_RUNS.append(self)
        try:
            self._timed_by = "with"
            self.time_tracker.start()
            self.initialize_core_services()
            # Live now: a SIGUSR1/SIGUSR2 that came while the command started reaches its
            # callback (the console command held it; see hold_startup_signals).
            self._signal_callbacks.deliver_held()
        except BaseException as exc:
            self.time_tracker.stop()
            self._end(exc)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> Literal[False]:
        """Stop the timer and call ``self.cleanup()`` (an override is called); never
        swallows the with-block's exception."""
        self.time_tracker.stop()
        self._end(exc_val)
        return False

    def _end(self, ended_by: BaseException | None) -> None:
        # self.cleanup() as the reference calls it, so that an override runs; what ended
        # the run reaches the package's cleanup through _ended_by. An override that
        # does not call it still leaves a final record, lock released, handlers closed.
        ended_by = self._stopped_by(ended_by)
        self._ended_by = ended_by
        try:
            self.cleanup()
        finally:
            self._ended_by = None
            if not self.machine.is_terminal:
                self._clean_up(ended_by=ended_by)

    def _stopped_by(self, ended_by: BaseException | None) -> BaseException | None:
        """What ended the run: the first stop delivered to it, whatever the user's code
        did after it (caught it with ``except KeyboardInterrupt``/``BaseException``,
        stopped cooperatively, then returned, raised something else or was stopped by
        a second signal); ``ended_by`` when no signal reached the run."""
        stop = self._stop
        if stop is None or ended_by is stop:
            return ended_by
        log = self._run.logger
        if log is not None:
            after = "returned" if ended_by is None else f"raised {describe_error(ended_by)}"
            log.warning(
                "%s reached the run and its code %s: the run is recorded as ended by %s",
                stop,
                after,
                stop,
            )
        if ended_by is not None:
            stop.__context__ = ended_by
        return stop

    def initialize_core_services(self) -> RunPaths | None:
        """Run every step up to READY; at or past READY, return ``paths`` and do nothing.

        Raises ``LifecycleError`` once the run has been cleaned up or has failed.
        """
        if self.machine.is_terminal:
            raise LifecycleError(
                "Cannot re-initialize after cleanup — RootOrchestrator is a single-use "
                f"context manager (this run is {self.machine.state.value}); create a new one"
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
        restore the process state; a no-op once the run has ended. Called by
        ``__exit__`` (and by a failing ``__enter__``): an override in a subclass or on
        the instance runs then, and should call this one."""
        self._clean_up(ended_by=self._ended_by)

    def _clean_up(self, ended_by: BaseException | None) -> None:
        # A signal arriving now is held until the record is final, then raised; a
        # SIGUSR1/SIGUSR2 is only logged.
        self._cleaning = True
        self._signals.hold()
        self._signal_callbacks.hold()
        try:
            if not self.machine.is_terminal:
                self.machine.cleanup(ended_by=ended_by)
        finally:
            if self in _LIVE_RUNS:
                _LIVE_RUNS.remove(self)
            self._signal_callbacks.restore()
            self._signals.restore()

    @property
    def stop_requested(self) -> bool:
        """**(beyond)** Whether SIGINT, SIGTERM or SIGHUP has reached this run while it
        was live. A training loop checks it at a step boundary (with
        :meth:`cooperative_stop`, where the signal raises nothing) to save a checkpoint
        and return: the run is still recorded as ended by that signal."""
        return self._stop is not None

    @property
    def stop_signal(self) -> signal.Signals | None:
        """**(beyond)** The first SIGINT/SIGTERM/SIGHUP that reached the live run (what
        it is recorded as ended by, unless it failed before); None when none did. A
        script run without the console command exits ``128 + stop_signal`` to say so."""
        return None if self._stop is None else signal.Signals(self._stop.signum)

    @contextlib.contextmanager
    def cooperative_stop(self) -> Iterator[RootOrchestrator]:
        """**(beyond)** Inside this ``with`` block, the first SIGINT/SIGTERM/SIGHUP
        raises nothing: it sets :attr:`stop_requested`, for the loop to checkpoint at
        its next step boundary and return. A second signal raises ``RunInterrupted``
        as usual (a loop that does not stop can still be stopped). Outside the block
        (the default), the first signal raises ``RunInterrupted``. Either way the
        run is recorded as ended by the signal and the console command exits
        ``128 + signum``."""
        previous = self._signals.set_cooperative(True)
        try:
            yield self
        finally:
            self._signals.set_cooperative(previous)

    def get_device(self) -> torch.device:
        """The resolved compute device (resolved on first use if needed)."""
        if self._run.device is None:
            self._run.device = resolve_device(self._run)
        return self._run.device

    def log_metrics(self, values: Mapping[str, object], step: object = None) -> None:
        """**(beyond)** Record ``values`` (names to numbers) at ``step``: one JSON line
        appended to this rank's ``metrics.jsonl`` (rank N: ``metrics.rank<N>.jsonl``) in
        the run directory, and each name's last value and step in the record's
        ``metrics`` (in ``run.json`` from its next write on).

        A value is an int or float, a NumPy scalar, or a tensor or array holding one
        number (0-d like ``loss``, or one element); NaN and infinities are recorded as
        they are (in JSON as ``"NaN"``, ``"Infinity"``, ``"-Infinity"``). ``step`` is
        an integer >= 0 (a NumPy integer or one-element tensor too) or None. Nothing
        about the values stops training: a name or value that cannot be recorded is
        left out with one warning in the run's log per name, a bad step is dropped
        from the line. Raises ``LifecycleError`` only before the run directory exists
        or after the run has ended."""
        self._recorder.log_metrics(values, step)

    def log_summary(self, values: Mapping[str, object]) -> None:
        """**(beyond)** Record the run's final figures (e.g. ``{"final_acc": 0.93}``): a
        summary line in the metrics file and the record's ``summary``; the same rules
        as :meth:`log_metrics`."""
        self._recorder.log_summary(values)

    def checkpoints(
        self, *, keep: int | None = DEFAULT_KEEP, per_rank: bool = False
    ) -> CheckpointStore:
        """**(beyond)** The run's checkpoints, in its ``checkpoints/`` folder: ``save`` the
        model, optimizer, scheduler, scaler, step, epoch, extras and every random state
        at a step boundary, ``load`` the latest back (on a resumed run, on any rank:
        the next attempt finds what the last one saved). ``per_rank`` False: rank 0
        saves one checkpoint for the run and every rank loads it; True: every rank
        saves and loads its own. ``keep``: how many each saver keeps (None: all). See
        :class:`orchestrator_fsm.checkpoints.CheckpointStore`. Raises
        ``LifecycleError`` while the run has no run directory (before phase 3, or on a
        rank outside rank 0's job)."""
        paths = self.paths
        if paths is None:
            raise LifecycleError(
                "cannot use checkpoints: this run has no run directory "
                f"(it is {self.machine.state.value})"
            )
        return CheckpointStore(
            paths.checkpoints,
            rank=self.rank,
            world_size=self.world_size,
            keep=keep,
            per_rank=per_rank,
            run_id=paths.run_id,
            log=self.run_logger,
        )

    def progress(
        self,
        iterable: Iterable[_T] | None = None,
        *,
        total: float | None = None,
        description: str = "",
        console: Console | IO[str] | None = None,
        plain_every_s: float | None = None,
    ) -> ProgressBar[_T]:
        """**(beyond)** A progress bar for the user's loop (see
        :func:`orchestrator_fsm.progress`), drawn on the run's console below its log
        lines (or on ``console``), and shown on rank 0 only (the other ranks' bars do
        nothing). ``plain_every_s``: None for the helper's default."""
        # Imported here: rich's progress machinery is not needed by a run without bars.
        from orchestrator_fsm.progress_bar import PLAIN_EVERY_S, progress

        return progress(
            iterable,
            total=total,
            description=description,
            console=console,
            disable=not self._run.is_main_process,
            plain_every_s=PLAIN_EVERY_S if plain_every_s is None else plain_every_s,
        )

    def on_signal(self, signum: int | str, callback: SignalCallback) -> None:
        """**(beyond)** Call ``callback(orchestrator, signum)`` when SIGUSR1 or SIGUSR2
        arrives while the run is live (from ``__enter__`` to the end of cleanup), e.g. to
        ask the loop to checkpoint before a preemption: set a flag that the loop checks
        at its next step boundary, where it saves (never save inside the callback).
        ``signum`` is ``signal.SIGUSR1``, ``"SIGUSR1"``
        or ``"USR1"`` (and the same for SIGUSR2); a callback attached to it before, or
        named in ``infrastructure.signal_callbacks``, is replaced. Works before and
        during the run; raises ``ValueError`` for any other signal and
        ``LifecycleError`` once the run has ended."""
        if self.machine.is_terminal:
            raise LifecycleError(
                f"cannot attach a signal callback: this run is {self.machine.state.value}"
            )
        self._signal_callbacks.attach(signum, callback)


#: The code that ends a run, in which a further signal is held rather than raised.
_EXIT_CODE: frozenset[object] = frozenset(
    function.__code__
    for function in (
        RootOrchestrator.__exit__,
        RootOrchestrator._end,
        RootOrchestrator.cleanup,
        RootOrchestrator._clean_up,
    )
)
