"""``orchestrator-fsm rerun RUN_DIR``: run a run again from its bundle and say whether it
matched.

First the drift between the run's bundle (``reports/rerun.json``) and what a rerun would
run now is reported (``--strict``: a drift refuses to start); then the run is started as
``orchestrator-fsm run`` in a child process (a real new run with its own record, its
``run.json`` naming the original in ``rerun_of``), with the saved resolved config
(``reports/config.yaml``) as its recipe, the overrides as given and the same entry,
in the original's working directory; the child writes its run directory to a file
``rerun`` names (``--run-dir-file``). A job of several ranks on one node is started
under ``torch.distributed.run`` with its world size; one that ran on several nodes or in
a SLURM job is refused in one line giving the command to run by hand
(:mod:`orchestrator_fsm.reproduce.relaunch`). Last, the two runs' metrics and checkpoints are
compared (:mod:`orchestrator_fsm.reproduce.compare`) and the original's
``reruns.jsonl`` gets one line naming the rerun and its verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from orchestrator_fsm.cli._shared import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    hash_seed_env,
    print_config_error,
    say,
    split_bare_overrides,
)
from orchestrator_fsm.layout import RERUNS_FILE, bundle_file

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator_fsm.reproduce.compare import Verdict
    from orchestrator_fsm.reproduce.drift import Drift

__all__ = [
    "EXIT_DIVERGED",
    "EXIT_DRIFT",
    "EXIT_WITHIN_TOLERANCE",
    "cmd_rerun",
    "format_drift",
]

EXIT_WITHIN_TOLERANCE: Final = 3
EXIT_DIVERGED: Final = 4
EXIT_DRIFT: Final = 5


_SHOWN_CHARS: Final = 60


def _shown(value: object) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def format_drift(items: list[Drift]) -> list[str]:
    """One aligned line per item: ``kind  key  before -> after``."""
    if not items:
        return []
    kind_width = max(len(item.kind) for item in items)
    key_width = min(40, max(len(item.key) for item in items))
    return [
        f"  {item.kind.ljust(kind_width)}  {item.key.ljust(key_width)}  "
        f"{_shown(item.before)} -> {_shown(item.after)}"
        for item in items
    ]


def _saved_config_data(path: Path) -> Any:
    """The saved config of an existing run (its ``config.yaml``), as data."""
    from orchestrator_fsm.config.recipe import load_trusted_yaml

    return load_trusted_yaml(path.read_bytes())


def _is_redacted(override: str) -> bool:
    from orchestrator_fsm.redaction import REDACTED

    value = override.partition("=")[2].strip()
    return value == REDACTED or f":{REDACTED}@" in value


def cmd_rerun(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Rerun ``args.run_dir``; the exit code (see the module and the README)."""
    from orchestrator_fsm.reproduce.bundle import BundleError, read_bundle, saved_config

    split_bare_overrides(args)
    original = Path(args.run_dir).resolve()
    attempt = getattr(args, "attempt", None)
    if attempt is not None and attempt < 1:
        say(err, f"error: --attempt counts from 1, got {attempt}", "red")
        return EXIT_USAGE
    try:
        # The latest attempt's config and bundle, or the named attempt's (a resumed run
        # may have continued with another config: each attempt's are kept).
        bundle = read_bundle(original, attempt)
    except BundleError as exc:
        say(err, f"error: {exc}", "red")
        return EXIT_USAGE
    entry = bundle.get("entry") or {}
    spec = entry.get("spec") if isinstance(entry, dict) else None
    saved = saved_config(original, bundle)
    if not spec:
        say(
            err,
            f"error: {bundle_file(original)} records no entry: the run was started "
            "from Python without a script file (python -c, python -m, a notebook); run "
            "that code again",
            "red",
        )
        return EXIT_USAGE
    if not saved.is_file():
        say(err, f"error: {saved} is missing; the run's config cannot be read back", "red")
        return EXIT_USAGE
    given = list(args.overrides)
    process = entry.get("kind") == "python"
    if process and given:
        say(
            err,
            f"error: {original} was made by {spec} itself (python {Path(spec).name}), which "
            "builds its own config: overrides cannot be given to its rerun",
            "red",
        )
        return EXIT_USAGE
    supplied = {text.partition("=")[0].strip() for text in given}
    redacted = [] if process else list((bundle.get("config") or {}).get("redacted_keys") or ())
    missing = [key for key in redacted if key not in supplied]
    if missing:
        keys = ", ".join(missing)
        say(
            err,
            f"error: cannot rerun {original}: its saved config has redacted secrets "
            f"at {keys}; give each again, e.g. "
            + " ".join(f"--set {key}=VALUE" for key in missing),
            "red",
        )
        return EXIT_USAGE
    kept = [text for text in bundle.get("overrides") or () if not _is_redacted(text)]
    overrides = [*kept, *given]
    from orchestrator_fsm.reproduce.code import CodeUnavailable, code_that_ran
    from orchestrator_fsm.reproduce.relaunch import RelaunchRefused, plan_relaunch

    script_argv = [str(arg) for arg in entry.get("argv") or ()] if "argv" in entry else None
    if script_argv is not None and any(_is_redacted(f"x={arg}") for arg in script_argv):
        say(
            err,
            f"error: cannot rerun {original}: the arguments of {spec} held a secret, "
            f"recorded redacted ({shlex.join(script_argv)}); run it again by hand",
            "red",
        )
        return EXIT_USAGE
    try:
        relaunch = plan_relaunch(original, bundle, _run_argv(spec, entry, saved, overrides))
    except RelaunchRefused as exc:
        # The by-hand command shows secrets as the bundle does (***), never as given.
        say(err, f"error: {_redacted_line(str(exc), given)}", "red")
        return EXIT_USAGE
    recorded_cwd = (bundle.get("command") or {}).get("cwd")
    try:
        with code_that_ran(original, bundle, current=args.current) as code:
            cwd = code.cwd(recorded_cwd) if isinstance(recorded_cwd, str) else None
            cwd = cwd if cwd is not None and os.path.isdir(cwd) else os.getcwd()
            ran = _entry_in(code.path, spec, entry) if not code.current else spec
            drift = _drift_now(
                bundle,
                saved,
                (ran, script_argv, process),
                overrides,
                cwd,
                relaunch.launcher_environment(),
                err,
                code.original,
                rebuilt=not code.current,
            )
            if isinstance(drift, int):
                return drift
            _print_drift(drift, out)
            say(out, code.says)
            from orchestrator_fsm.reproduce.drift import is_drift

            if args.strict and any(is_drift(item) for item in drift):
                say(
                    err,
                    "refused: --strict and the rerun would not run what the original ran",
                    "red",
                )
                return EXIT_DRIFT
            run_argv = _run_argv(ran, entry, saved, overrides)
            if process:
                command = relaunch.command(sys.executable, run_argv, program=())
            else:
                command = _with_options(
                    relaunch.command(sys.executable, run_argv), "--rerun-of", str(original)
                )
            say(out, f"rerunning {original} ({relaunch.describe()})")
            env = dict(os.environ)
            python_path = code.python_path()
            if python_path is not None:
                env["PYTHONPATH"] = python_path
            code_run, new_dir = _run_child(command, cwd, env, original if process else None)
    except CodeUnavailable as exc:
        say(err, f"error: {exc}", "red")
        return EXIT_USAGE
    if code_run != EXIT_OK or new_dir is None:
        runner = "torchrun" if relaunch.torchrun else "orchestrator-fsm run"
        runner = f"python {Path(spec).name}" if process and not relaunch.torchrun else runner
        say(err, f"the rerun failed ({runner} exited {code_run})", "red")
        _note_rerun(original, new_dir, None, code_run)
        return code_run if code_run >= 128 else EXIT_FAILURE
    _say_ranks(original, new_dir, out)
    return _verdict(original, new_dir, args, bundle, out, code_run)


def _entry_in(path: Callable[[str], str], spec: str, entry: dict[str, Any]) -> str:
    """``spec`` naming the entry's file where ``path`` puts it (a module: as it is)."""
    file = entry.get("path")
    if entry.get("kind") not in ("script", "python", "file") or not isinstance(file, str):
        return spec
    moved = path(file)
    return moved if entry.get("kind") != "file" else f"{moved}:{spec.rpartition(':')[2]}"


def _run_argv(spec: str, entry: dict[str, Any], saved: Path, overrides: list[str]) -> list[str]:
    """The command line (after the interpreter) that runs ``spec`` again: ``run`` with
    the saved config, the overrides and the entry (a script's arguments after ``--``);
    for a run made from Python, the script and its arguments."""
    argv = [str(arg) for arg in entry.get("argv") or ()]
    if entry.get("kind") == "python":
        return [spec, *argv]
    sets = [f"--set={text}" for text in overrides]
    if entry.get("kind") == "script":
        return ["run", str(saved), "--script", spec, *sets, "--", *argv]
    return ["run", str(saved), "--entry", spec, *sets]


def _with_options(command: list[str], *options: str) -> list[str]:
    """``command`` (an ``orchestrator-fsm run``) with ``options`` added to its own:
    before the ``--`` that starts a script's arguments, when there is one."""
    if "--" not in command:
        return [*command, *options]
    cut = command.index("--")
    return [*command[:cut], *options, *command[cut:]]


def _redacted_line(line: str, given: list[str]) -> str:
    """``line`` with the values of the secret overrides in ``given`` as ``***``."""
    from orchestrator_fsm.phases.bundle import redacted_overrides

    for text, shown in zip(given, redacted_overrides(given), strict=True):
        if text != shown:
            line = line.replace(text, shown)
    return line


def _say_ranks(original: Path, new_dir: Path, out: Console) -> None:
    """How many ranks each run had, as their records say (rank 0's and ``ranks/``)."""
    from orchestrator_fsm.lifecycle.record import read_run

    def ranks(run_dir: Path) -> str:
        try:
            record = read_run(run_dir)
        except (OSError, ValueError):
            return "?"
        return str(record.world_size or (1 + len(record.ranks)))

    say(out, f"ranks: {ranks(original)} in the original, {ranks(new_dir)} in the rerun")


def _drift_now(
    bundle: dict[str, Any],
    saved: Path,
    entry: tuple[str, list[str] | None, bool],
    overrides: list[str],
    cwd: str,
    launcher_env: dict[str, str],
    err: Console,
    original_path: Callable[[str], str],
    *,
    rebuilt: bool = False,
) -> list[Drift] | int:
    """What differs between the bundle and a rerun now (the exit code on a bad config).

    ``entry`` is the spec, a script's arguments and whether the script made the run
    itself; ``original_path`` names a path of the rebuilt code as the original run
    named it (the entry is compared as it was named); ``rebuilt``: the code is the
    recorded commit in a temporary worktree (on no branch). ``launcher_env`` is what
    the relaunch's launcher adds to the variables the ranks are
    given (torchrun's ``OMP_NUM_THREADS``): recreated, so no drift."""
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.environment import launch_environment
    from orchestrator_fsm.errors import ConfigError
    from orchestrator_fsm.git_state import read_git_state
    from orchestrator_fsm.phases.bundle import snapshot
    from orchestrator_fsm.phases.manifest import redacted_config, requirement_lines
    from orchestrator_fsm.reproduce.bundle import working_directory
    from orchestrator_fsm.reproduce.drift import bundle_drift

    with working_directory(cwd):
        try:
            cfg = Config.from_recipe(saved, overrides)
        except ConfigError as exc:
            print_config_error(err, exc, str(saved))
            return EXIT_USAGE
        seeds = bundle.get("seeds") or {}
        now = snapshot(
            cfg,
            entry[0],
            entry_argv=entry[1],
            entry_is_process=entry[2],
            config=redacted_config(cfg),
            # The recipe the original read (the rerun reads the saved config instead).
            recipe=(bundle.get("recipe") or {}).get("path") or None,
            git=read_git_state(),
            requirements=requirement_lines(),
            # The run command sets PYTHONHASHSEED itself for a reproducible recipe.
            launch_env={**launch_environment(), **hash_seed_env(cfg), **launcher_env},
            rank=int(seeds.get("rank") or 0),
            world_size=int(seeds.get("world_size") or 1),
        )
    sections = dict(now.sections)
    recorded_git, git_now = bundle.get("git"), sections.get("git")
    # The recorded commit, checked out detached: the branch it was on is a name only.
    same_commit = (
        rebuilt
        and isinstance(recorded_git, dict)
        and isinstance(git_now, dict)
        and git_now.get("commit") == recorded_git.get("commit")
    )
    if same_commit and isinstance(git_now, dict) and isinstance(recorded_git, dict):
        sections["git"] = {**git_now, "branch": recorded_git.get("branch")}
    described = sections.get("entry")
    if isinstance(described, dict) and described.get("path"):
        described = {**described, "path": original_path(described["path"])}
        recorded = bundle.get("entry") or {}
        # The same file, rebuilt elsewhere or named otherwise, is the same entry.
        if described["kind"] != "module" and described["path"] == recorded.get("path"):
            described["spec"] = recorded.get("spec")
        sections["entry"] = described
    return bundle_drift(
        bundle,
        sections,
        config_before=_saved_config_data(saved),
        config_after=now.config,
    )


def _print_drift(drift: list[Drift], out: Console) -> None:
    from orchestrator_fsm.reproduce.drift import is_drift

    real = [item for item in drift if is_drift(item)]
    notes = [item for item in drift if not is_drift(item)]
    if real:
        say(out, f"drift ({len(real)}): what the rerun runs differs from the original")
        for line in format_drift(real):
            say(out, line)
    else:
        say(out, "drift: none (same config, overrides, seeds, packages, git, entry, environment)")
    if notes:
        say(out, "notes (no drift):")
        for line in format_drift(notes):
            say(out, line)


def _run_child(
    command: list[str], cwd: str, env: dict[str, str], process_of: Path | None
) -> tuple[int, Path | None]:
    """Run ``command`` (an ``orchestrator-fsm run``; with ``process_of``, the script that
    made that run itself) in ``cwd`` with ``env``, its output passed through; its exit
    code and the run directory it wrote to the file named by ``--run-dir-file`` (for a
    script, by the environment) (``None`` when it made none)."""
    from orchestrator_fsm.run_context import RERUN_OF_ENV, RUN_DIR_FILE_ENV

    with tempfile.TemporaryDirectory(prefix="orchestrator-fsm-rerun-") as scratch:
        told = Path(scratch) / "run-dir"
        if process_of is not None:
            env = {**env, RERUN_OF_ENV: str(process_of), RUN_DIR_FILE_ENV: str(told)}
        else:
            command = _with_options(command, "--run-dir-file", str(told))
        try:
            code = subprocess.call(command, cwd=cwd, env=env)
        except KeyboardInterrupt:
            # The child got the same signal (one process group) and cleans itself up;
            # subprocess.call waited for it before re-raising.
            code = EXIT_INTERRUPTED
        return code, _told_run_dir(told)


def _told_run_dir(told: Path) -> Path | None:
    """The run directory the child wrote to ``told``, when it names one."""
    try:
        text = told.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    candidate = Path(text) if text else None
    return candidate if candidate is not None and candidate.is_dir() else None


def _note_rerun(original: Path, new_dir: Path | None, verdict: Verdict | None, code: int) -> None:
    """Append the rerun to the original's ``reruns.jsonl`` (one whole line)."""
    from orchestrator_fsm._fs import append_whole

    line = {
        "time": datetime.now(timezone.utc).isoformat(),
        "run_dir": None if new_dir is None else str(new_dir),
        "exit_code": code,
        "verdict": None if verdict is None else verdict.to_json(),
    }
    try:
        append_whole(original / RERUNS_FILE, json.dumps(line, sort_keys=True) + "\n")
    except OSError as exc:
        say_line = f"orchestrator-fsm: could not append to {original / RERUNS_FILE} ({exc})"
        print(say_line, file=sys.stderr)


def _verdict(
    original: Path,
    new_dir: Path,
    args: argparse.Namespace,
    bundle: dict[str, Any],
    out: Console,
    run_code: int,
) -> int:
    from orchestrator_fsm.reproduce.bundle import BundleError, read_bundle
    from orchestrator_fsm.reproduce.compare import DEFAULT_IGNORED, IDENTICAL, compare_runs
    from orchestrator_fsm.reproduce.drift import bundle_drift

    ignore = tuple(args.ignore) if args.ignore is not None else DEFAULT_IGNORED
    verdict = compare_runs(original, new_dir, rtol=args.rtol, atol=args.atol, ignore=ignore)
    try:
        libraries = [
            item for item in bundle_drift(bundle, read_bundle(new_dir)) if item.kind == "libraries"
        ]
    except BundleError:
        libraries = []
    if libraries:
        say(out, f"loaded native libraries differ ({len(libraries)}):")
        for line in format_drift(libraries):
            say(out, line)
    if verdict.ignored:
        say(out, f"not compared: {', '.join(verdict.ignored)} (durations; --ignore to choose)")
    for name, state in verdict.checkpoints.items():
        say(out, f"checkpoint {name}: {state}")
    if not verdict.checkpoints:
        say(out, "checkpoints: none in either run")
    say(out, f"metrics: {verdict.lines[0]} lines in the original, {verdict.lines[1]} in the rerun")
    say(out, verdict.headline, "green" if verdict.status == IDENTICAL else "red")
    code = {IDENTICAL: EXIT_OK, "within tolerance": EXIT_WITHIN_TOLERANCE}.get(
        verdict.status, EXIT_DIVERGED
    )
    _note_rerun(original, new_dir, verdict, code)
    return code if run_code == EXIT_OK else run_code
