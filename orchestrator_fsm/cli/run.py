"""``orchestrator-fsm run``: a pipeline inside the lifecycle, its failure and final status."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

from orchestrator_fsm._startup import hand_back
from orchestrator_fsm.cli._shared import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    hash_seed_env,
    print_config_error,
    recipe_label,
    say,
    split_bare_overrides,
)
from orchestrator_fsm.cli.what_runs import chosen_entry, config_without_schema
from orchestrator_fsm.entry import entry_schema, entry_search_path, resolve_entry, script_entry
from orchestrator_fsm.errors import ConfigError, EntryPointError, LockContendedError, RunInterrupted
from orchestrator_fsm.lifecycle.record import outcome_of
from orchestrator_fsm.lifecycle.signals import SignalGuard
from orchestrator_fsm.status import COMPLETED, FAILED, INTERRUPTED

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator_fsm.config import Config
    from orchestrator_fsm.orchestrator import Entry, RootOrchestrator

__all__ = ["cmd_run"]

# Where a run that failed before it had a log file leaves its traceback, in the cache.
_LAST_FAILURE_FILE: Final = "last-failure.log"


def cmd_run(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Run the script or pipeline ``args`` (or the recipe) names on ``args.recipe``; the
    exit code.

    With ``args.multirun``, run the sweep the bare overrides describe instead."""
    split_bare_overrides(args)
    if args.multirun:
        hand_back()
        from orchestrator_fsm.cli.sweep import cmd_sweep

        return cmd_sweep(args, out, err)
    loaded = config_without_schema(args, err)
    if isinstance(loaded, int):
        _hint_multirun(args.bare, err)
        return loaded
    if args.exiting:
        _fix_hash_seed(loaded)
    chosen = chosen_entry(args, loaded)
    if isinstance(chosen, str):
        say(err, f"error: {chosen}", "red")
        return EXIT_USAGE
    spec, script_args = chosen
    with entry_search_path(spec):
        try:
            if script_args is not None:
                entry: Entry = script_entry(spec, script_args)
                schema: dict[str, type] = {}
            else:
                entry = resolve_entry(spec)
                schema = entry_schema(entry, spec)
            cfg = loaded.with_schema(schema) if schema else loaded
        except EntryPointError as exc:
            say(err, f"error: {exc}", "red")
            return EXIT_USAGE
        except ConfigError as exc:
            print_config_error(err, exc, args.recipe)
            _hint_multirun(args.bare, err)
            return EXIT_USAGE
        # One voice for the job: rank 0 prints; the other ranks say only what went
        # wrong with them (on stderr), and their records are in the run directory.
        if not _is_other_rank():
            label = recipe_label(args.recipe)
            if args.recipe is None and args.script is not None:
                label = "none (a script's defaults: training.seed=0)"
            say(out, f"recipe: {cfg.source or label}")
            shown = spec if script_args is None else shlex.join([spec, *script_args])
            say(out, f"{'script' if script_args is not None else 'entry'}: {shown}")
        else:
            out.quiet = True
        # SIGINT, SIGTERM and SIGHUP end the run as an interrupt before the run is live
        # too (the run's own guard takes over from __enter__ to cleanup); once the run
        # has ended, one is held while the outcome is reported and sets the exit code.
        # Until here a signal ended the command at once with one line (_startup), while
        # torch and the entry were imported: an interrupt raised inside an import can be
        # swallowed, or end the process from C++ (torch's distributed set-up). Import
        # the run's modules under it too, then hand over.
        from orchestrator_fsm.orchestrator import RootOrchestrator  # noqa: F401

        hand_back()
        guard = SignalGuard()
        guard.install()
        code = EXIT_OK
        try:
            orch, failure = _run_entry(
                cfg,
                entry,
                resume=args.resume,
                force=args.force,
                sweep=args.sweep_member,
                spec=spec,
                rerun_of=args.rerun_of,
                script_args=script_args,
            )
            guard.hold()
            failure = _stopped_by(orch, failure)
            _tell_run_directory(args.run_dir_file, orch)
            code = _report_outcome(orch, failure, cfg, out, err, debug=args.debug)
        finally:
            # The process ends after this command: from here a signal ends it at once
            # with the code the run earned, whatever still runs (the user's threads).
            then = _exit_at_once(lambda: code) if args.exiting else None
            try:
                guard.restore(then)
            except RunInterrupted as late:
                code = code if code != EXIT_OK else 128 + late.signum
    return code


def _fix_hash_seed(cfg: Config) -> None:
    """Start the command again with ``PYTHONHASHSEED`` set to the recipe's seed when
    the recipe is reproducible and the variable is unset: Python reads it only at start,
    and this process has imported neither torch nor the entry yet. The same process
    (``exec``), so its id, arguments, streams and exit code are the launcher's."""
    added = hash_seed_env(cfg)
    if not added:  # not reproducible, or set (by the user, or the start before this)
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    env = {**os.environ, **added}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def _stopped_by(
    orch: RootOrchestrator | None, failure: BaseException | None
) -> BaseException | None:
    """What stopped the run, for its report and exit code: the first signal that
    reached it (the run's record says so too), whatever the entry did after it (caught
    what it raised, stopped cooperatively, returned, raised something else, was
    stopped by a second signal); ``failure`` when no signal reached the run."""
    stop = None if orch is None else orch.stop_signal
    if stop is None:
        return failure
    if isinstance(failure, RunInterrupted) and failure.signum == stop:
        return failure
    return RunInterrupted(stop)


def _hint_multirun(overrides: list[str], err: Console) -> None:
    """After a config error: say so when a bare override looks like a sweep."""
    from orchestrator_fsm.sweep import expand_sweep

    for override in overrides:
        try:
            swept = len(expand_sweep([override])) > 1
        except ValueError:
            continue
        if swept:
            say(err, f"(to run each value of {override!r} as its own run, add --multirun)", "dim")


def _exit_at_once(code: Callable[[], int]) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code() or 128 + signum)

    return handler


def _report_outcome(
    orch: RootOrchestrator | None,
    failure: BaseException | None,
    cfg: Config,
    out: Console,
    err: Console,
    *,
    debug: bool,
) -> int:
    """Print what stopped the run (on rank 0: the job), its directory and its final
    status; the exit code."""
    # What run.json holds, unless writing it failed (which the recorder reported).
    run = None if orch is None else orch.record
    code = _report_failure(failure, orch, cfg, err, debug=debug)
    if run is not None and run.failed_rank is not None and code == EXIT_OK:
        where = f" in step {run.error.step!r}" if run.error is not None else ""
        what = f": {run.error}" if run.error is not None else ""
        say(err, f"error on rank {run.failed_rank}{where}{what}", "red")
        code = EXIT_FAILURE
    status = run.status if run is not None else None
    if status is None:
        if isinstance(failure, KeyboardInterrupt):
            status = INTERRUPTED
        else:
            status = COMPLETED if code == EXIT_OK else FAILED
    if run is not None and run.summary:
        from orchestrator_fsm.cli.inspect import format_values

        say(out, f"summary: {format_values(run.summary)}")
    if orch is not None and orch.paths is not None:
        say(out, f"run directory: {orch.paths.root}")
    else:
        say(out, "run directory: none (the run ended before creating it)")
    say(out, f"status: {status}", "green" if status == COMPLETED else "red")
    return code


def _tell_run_directory(target: str | None, orch: RootOrchestrator | None) -> None:
    """Write the run directory to ``target`` (``--run-dir-file``, given by ``rerun``)
    once the run has ended; nothing when no directory was made."""
    if target is None or orch is None or orch.paths is None:
        return
    from orchestrator_fsm._fs import atomic_write_text

    try:
        atomic_write_text(Path(target), f"{orch.paths.root}\n")
    except OSError as exc:
        print(f"orchestrator-fsm: could not write {target} ({exc})", file=sys.stderr)


def _is_other_rank() -> bool:
    from orchestrator_fsm.distributed import discover_launch

    try:
        return not discover_launch().is_main_process
    except ValueError:
        return False  # the run itself reports the malformed variable


def _run_entry(
    cfg: Config,
    entry: Entry,
    *,
    resume: str | None,
    force: bool,
    sweep: str | None,
    spec: str | None = None,
    rerun_of: str | None = None,
    script_args: list[str] | None = None,
) -> tuple[RootOrchestrator | None, BaseException | None]:
    """Run ``entry`` inside a lifecycle (continuing ``resume`` when given, as a member
    of ``sweep``, ``ID:INDEX``, when given); return the orchestrator (when one was
    made) and what stopped the run (None when it completed)."""
    from orchestrator_fsm.orchestrator import RootOrchestrator

    orch: RootOrchestrator | None = None
    membership = None
    if sweep is not None:
        sweep_id, _, index = sweep.rpartition(":")
        membership = (sweep_id, int(index)) if index.isdigit() else None
    try:
        orch = RootOrchestrator(
            cfg,
            resume=resume,
            force_resume=force,
            sweep=membership,
            entry=spec,
            rerun_of=rerun_of,
            entry_argv=script_args,
        )
        with orch:
            entry(orch)
    except (Exception, KeyboardInterrupt) as exc:
        return orch, exc
    return orch, None


def _log_file(orch: RootOrchestrator | None) -> Path | None:
    """Rank 0's log file of ``orch``'s run, when it exists."""
    from orchestrator_fsm.layout import LOG_FILE, LOGS_DIR

    if orch is None or orch.paths is None:
        return None
    path = orch.paths.root / LOGS_DIR / LOG_FILE
    return path if path.is_file() else None


def _write_traceback(failure: BaseException) -> Path | None:
    """``failure``'s traceback written to ``last-failure.log`` in the per-user cache
    directory (``~/.cache/orchestrator-fsm``), for a run that failed before it had a
    log file; that file, or None when it cannot be written."""
    import traceback

    from orchestrator_fsm._fs import atomic_write_text
    from orchestrator_fsm.phases.filesystem import default_cache_dir

    path = default_cache_dir() / _LAST_FAILURE_FILE
    text = "".join(traceback.format_exception(type(failure), failure, failure.__traceback__))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    except OSError:
        return None
    return path


def _report_failure(
    failure: BaseException | None,
    orch: RootOrchestrator | None,
    cfg: Config,
    err: Console,
    *,
    debug: bool,
) -> int:
    """Print what stopped the run (one line, or a traceback with ``debug``); the exit code."""
    if failure is None:
        return EXIT_OK
    if isinstance(failure, KeyboardInterrupt):
        reason = f" ({failure})" if str(failure) else ""
        say(err, f"interrupted{reason}; the run was cleaned up", "red")
        # 128 + the signal's number, as shells report a process ended by that signal.
        code = 128 + failure.signum if isinstance(failure, RunInterrupted) else EXIT_INTERRUPTED
    elif isinstance(failure, LockContendedError):
        # Expected, and whole in one line: the holder is in the message.
        message = " ".join(f"{type(failure).__name__}: {failure}".split())
        log = _log_file(orch)
        where = f"; the traceback is in {log}" if log is not None else ""
        say(err, f"refused in step 'acquire_lock': {message}{where}", "red")
        code = EXIT_FAILURE
        if not debug:
            return code
    elif isinstance(failure, ConfigError):
        print_config_error(err, failure, str(cfg.source) if cfg.source else None)
        code = EXIT_USAGE
    else:
        error = outcome_of(orch.machine)[1] if orch is not None else None
        step = error.step if error is not None else None
        where = f" in step {step!r}" if step else ""
        message = " ".join(f"{type(failure).__name__}: {failure}".split())
        say(err, f"error{where}: {message}", "red")
        code = EXIT_FAILURE
    if debug:
        from rich.traceback import Traceback

        err.print(Traceback.from_exception(type(failure), failure, failure.__traceback__))
    elif code == EXIT_FAILURE:
        log = _log_file(orch) or _write_traceback(failure)
        if log is not None:
            say(err, f"(the traceback is in {log})", "dim")
        else:
            say(err, "(run again with --debug for the traceback)", "dim")
    return code
