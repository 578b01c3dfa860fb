"""The ``orchestrator-fsm`` command (also ``python -m orchestrator_fsm``).

Sub-commands:

- ``run [RECIPE] [--set a.b=v ...] [--entry module:function] [--debug]`` runs a
  pipeline inside the lifecycle (by default the bundled demo recipe and pipeline);
- ``diagram [--format mermaid|dot|svg] [--output PATH]`` draws the state machine;
- ``inspect RUN_DIR [--json]`` shows a run's status, timeline, error and files;
- ``validate RECIPE [--set a.b=v ...]`` checks a recipe and summarises it.

Exit codes: 0 success; 1 a failure in the pipeline, the lifecycle or a diagram;
2 a usage or config error (bad recipe, bad ``--entry``, no run in ``RUN_DIR``);
130 interrupted (Ctrl-C, or SIGTERM during ``run``).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import importlib.util
import json
import os
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.traceback import Traceback

from orchestrator_fsm._fs import atomic_write_text, slugify
from orchestrator_fsm._version import __version__
from orchestrator_fsm.errors import ConfigError, OrchestratorError

if TYPE_CHECKING:
    from orchestrator_fsm.config import Config
    from orchestrator_fsm.lifecycle.machine import TransitionRecord
    from orchestrator_fsm.lifecycle.record import RunRecord
    from orchestrator_fsm.orchestrator import RootOrchestrator

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EntryPointError",
    "build_parser",
    "main",
    "resolve_entry",
]

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

#: How many files of one run sub-folder ``inspect`` lists before summarising the rest.
_FILES_SHOWN: Final = 12

Entry = Callable[["RootOrchestrator"], object]


class EntryPointError(OrchestratorError):
    """An ``--entry`` spec does not name a callable that can be imported."""


class _UsageError(Exception):
    """A problem with what the user asked for: message printed, exit code 2."""


# -- entry points -------------------------------------------------------------------------


def _looks_like_file(module_part: str) -> bool:
    return module_part.endswith(".py") or "/" in module_part or os.sep in module_part


def _split_entry(spec: str) -> tuple[str, str]:
    module_part, sep, attr_path = spec.rpartition(":")
    if not sep or not module_part or not attr_path:
        raise EntryPointError(
            f"--entry must be 'module:function' or 'path/to/file.py:function'; got {spec!r}"
        )
    return module_part, attr_path


def _entry_search_dirs(spec: str) -> list[str]:
    """Where the entry's module (and what it imports) is found: like ``python -m`` or
    ``python file.py``, the working directory or the file's own directory."""
    module_part = spec.rpartition(":")[0]
    if module_part and _looks_like_file(module_part):
        return [str(Path(module_part).expanduser().resolve().parent)]
    return [os.getcwd()]


@contextlib.contextmanager
def _prepended_to_sys_path(directories: Sequence[str]) -> Iterator[None]:
    added = [d for d in directories if d not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for directory in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(directory)


def _import_file(path_text: str) -> types.ModuleType:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise EntryPointError(f"entry file not found: {path_text!r} (looked for {path.absolute()})")
    name = "orchestrator_fsm_entry_" + slugify(path.stem, fallback="module").replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise EntryPointError(f"cannot import {path_text!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before running, as `import` would: dataclasses and pickling look it up.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if not isinstance(exc, Exception):
            raise
        raise EntryPointError(
            f"importing entry file {path_text!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _import_module(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if name == missing or name.startswith(missing + "."):
            raise EntryPointError(
                f"entry module {name!r} not found (looked in the working directory "
                f"{os.getcwd()} and on sys.path); a file is given as 'path/to/file.py:function'"
            ) from exc
        raise EntryPointError(
            f"importing entry module {name!r} failed: ModuleNotFoundError: {exc}"
        ) from exc
    except Exception as exc:
        raise EntryPointError(
            f"importing entry module {name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def resolve_entry(spec: str) -> Entry:
    """The callable named by ``spec``: ``module:function`` or ``path/to/file.py:function``.

    ``function`` may be a dotted path (``module:Class.method``). A module is looked up
    on ``sys.path``; run from the CLI, the working directory is searched first. Raises
    ``EntryPointError`` saying what is wrong: no colon, module or file not found, an
    import that failed, a missing attribute (with close matches), or not a callable.
    """
    module_part, attr_path = _split_entry(spec)
    if _looks_like_file(module_part):
        module = _import_file(module_part)
    else:
        module = _import_module(module_part)
    target: Any = module
    walked: list[str] = []
    for name in attr_path.split("."):
        if not hasattr(target, name):
            where = ".".join([module_part, *walked]) if walked else module_part
            candidates = [n for n in dir(target) if not n.startswith("_")]
            close = difflib.get_close_matches(name, candidates, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise EntryPointError(f"{where!r} has no attribute {name!r} (--entry {spec!r}){hint}")
        target = getattr(target, name)
        walked.append(name)
    if not callable(target):
        raise EntryPointError(
            f"--entry {spec!r} names an object of type {type(target).__name__}, not a "
            "callable; it must be a function taking the orchestrator"
        )
    entry: Entry = target
    return entry


# -- output helpers -------------------------------------------------------------------------


def _say(console: Console, text: str | Text, style: str | None = None) -> None:
    """Print without markup, highlighting or wrapping: paths and messages stay intact."""
    console.print(
        text if isinstance(text, Text) else Text(text, style=style or ""),
        soft_wrap=True,
        highlight=False,
    )


def _print_config_error(err: Console, exc: ConfigError, fallback_source: str | None) -> None:
    source = exc.source or fallback_source or "<in-memory config>"
    if not exc.problems:
        _say(err, f"error: invalid config in {source}: {exc}", "red")
        return
    count = len(exc.problems)
    _say(err, f"error: invalid config in {source} ({count} problem{'s' * (count != 1)}):", "red")
    for path, message in exc.problems:
        _say(err, f"  {source}: {path}: {message}" if path else f"  {source}: {message}")


def _load_config(recipe: str | None, overrides: Sequence[str]) -> Config:
    from orchestrator_fsm.config import Config

    if recipe is not None:
        return Config.from_recipe(Path(recipe), overrides=overrides)
    from orchestrator_fsm.demo import demo_recipe

    with demo_recipe() as path:
        return Config.from_recipe(path, overrides=overrides)


def _recipe_label(recipe: str | None) -> str:
    return recipe if recipe is not None else "the bundled demo recipe"


def _config_or_exit_code(args: argparse.Namespace, err: Console) -> Config | int:
    try:
        return _load_config(args.recipe, args.overrides)
    except ConfigError as exc:
        _print_config_error(err, exc, args.recipe)
        return EXIT_USAGE
    except OSError as exc:
        _say(err, f"error: cannot read the recipe {_recipe_label(args.recipe)}: {exc}", "red")
        return EXIT_USAGE


# -- run --------------------------------------------------------------------------------------


def _raise_keyboard_interrupt(signum: int, frame: types.FrameType | None) -> NoReturn:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt, so the run is rolled back or
    cleaned up and recorded as interrupted; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_record(orch: RootOrchestrator | None) -> RunRecord | None:
    """The run's record, or None when no run directory was made (or it is unreadable)."""
    if orch is None or orch.paths is None:
        return None
    from orchestrator_fsm.lifecycle.record import read_run

    try:
        return read_run(orch.paths.root)
    except (OSError, ValueError):
        return None


def _cmd_run(args: argparse.Namespace, out: Console, err: Console) -> int:
    loaded = _config_or_exit_code(args, err)
    if isinstance(loaded, int):
        return loaded
    cfg = loaded
    from orchestrator_fsm.demo import DEMO_ENTRY

    spec = args.entry or DEMO_ENTRY
    with _prepended_to_sys_path(_entry_search_dirs(spec)):
        try:
            entry = resolve_entry(spec)
        except EntryPointError as exc:
            _say(err, f"error: {exc}", "red")
            return EXIT_USAGE
        _say(out, f"recipe: {cfg.source or _recipe_label(args.recipe)}")
        _say(out, f"entry: {spec}")
        orch, failure = _run_entry(cfg, entry)

    run = _run_record(orch)
    code = _report_failure(failure, run, cfg, err, debug=args.debug)
    status = run.status if run is not None else None
    if status is None:
        status = {EXIT_OK: "completed", EXIT_INTERRUPTED: "interrupted"}.get(code, "failed")
    if orch is not None and orch.paths is not None:
        _say(out, f"run directory: {orch.paths.root}")
    elif orch is not None and not orch.is_main_process:
        _say(out, f"run directory: none on rank {orch.rank} (rank 0 writes it)")
    else:
        _say(out, "run directory: none (the run ended before creating it)")
    _say(out, f"status: {status}", "green" if status == "completed" else "red")
    return code


def _run_entry(cfg: Config, entry: Entry) -> tuple[RootOrchestrator | None, BaseException | None]:
    """Run ``entry`` inside a lifecycle; return the orchestrator (when one was made) and
    what stopped the run (None when it completed)."""
    from orchestrator_fsm.orchestrator import RootOrchestrator

    orch: RootOrchestrator | None = None
    try:
        with _sigterm_interrupts():
            orch = RootOrchestrator(cfg)
            with orch:
                entry(orch)
    except (Exception, KeyboardInterrupt) as exc:
        return orch, exc
    return orch, None


def _report_failure(
    failure: BaseException | None,
    run: RunRecord | None,
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
        _say(err, f"interrupted{reason}; the run was cleaned up", "red")
        code = EXIT_INTERRUPTED
    elif isinstance(failure, ConfigError):
        _print_config_error(err, failure, str(cfg.source) if cfg.source else None)
        code = EXIT_USAGE
    else:
        step = run.error.step if run is not None and run.error is not None else None
        where = f" in step {step!r}" if step else ""
        message = " ".join(f"{type(failure).__name__}: {failure}".split())
        _say(err, f"error{where}: {message}", "red")
        code = EXIT_FAILURE
    if debug:
        err.print(Traceback.from_exception(type(failure), failure, failure.__traceback__))
    elif code == EXIT_FAILURE:
        _say(err, "(run again with --debug for the traceback)", "dim")
    return code


# -- diagram ------------------------------------------------------------------------------------


def _cmd_diagram(args: argparse.Namespace, out: Console, err: Console) -> int:
    from orchestrator_fsm.diagrams import render

    try:
        text = render(args.format)
    except OrchestratorError as exc:  # GraphvizNotFoundError, or dot itself failed
        _say(err, f"error: {exc}", "red")
        return EXIT_FAILURE
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return EXIT_OK
    target = Path(args.output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    except OSError as exc:
        _say(err, f"error: cannot write the diagram to {target}: {exc}", "red")
        return EXIT_FAILURE
    _say(err, f"wrote the {args.format} diagram to {target}")
    return EXIT_OK


# -- inspect -----------------------------------------------------------------------------------


def _load_run(run_dir: Path) -> RunRecord:
    from orchestrator_fsm.lifecycle.record import RUN_FILE, read_run

    if not run_dir.is_dir():
        raise _UsageError(f"{run_dir} is not a directory; expected a run directory")
    if not (run_dir / RUN_FILE).is_file():
        raise _UsageError(
            f"{run_dir} holds no {RUN_FILE}; expected a run directory "
            "(<telemetry.output_dir>/<run_id>) written by orchestrator-fsm"
        )
    try:
        return read_run(run_dir)
    except (OSError, ValueError) as exc:
        raise _UsageError(f"cannot read {run_dir / RUN_FILE}: {exc}") from exc


def _run_files(run_dir: Path) -> dict[str, list[str]]:
    """Files in each sub-folder of the run, relative to it, sorted; absent folders omitted."""
    from orchestrator_fsm.phases.filesystem import RUN_SUBDIRECTORIES

    files: dict[str, list[str]] = {}
    for name in RUN_SUBDIRECTORIES:
        folder = run_dir / name
        if folder.is_dir():
            files[name] = sorted(
                str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
            )
    return files


def _format_seconds(seconds: object) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    from orchestrator_fsm.phases.timing import format_duration

    return format_duration(float(seconds))


def _cmd_inspect(args: argparse.Namespace, out: Console, err: Console) -> int:
    run_dir = Path(args.run_dir)
    try:
        run = _load_run(run_dir)
    except _UsageError as exc:
        _say(err, f"error: {exc}", "red")
        return EXIT_USAGE
    files = _run_files(run_dir)
    if args.json:
        payload = {
            **run.to_json(),
            "effective_status": run.effective_status,
            "transitions": [record.to_json() for record in run.transitions],
            "files": files,
        }
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()
        return EXIT_OK

    out.print(_summary_table(run))
    out.print(_timeline_table(run.transitions))
    if run.error is not None:
        _say(out, f"failed step: {run.error.step}: {run.error.type}: {run.error.message}", "red")
    out.print(_files_table(run_dir, files))
    return EXIT_OK


def _status_text(run: RunRecord) -> Text:
    status = run.effective_status
    style = {"completed": "green", "running": "yellow"}.get(status, "red")
    text = Text(status, style=f"bold {style}")
    if status != run.status:
        text.append(
            f" (run.json says {run.status!r}, but process {run.pid} is gone from {run.host})",
            style="dim",
        )
    return text


def _or_dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _summary_table(run: RunRecord) -> Table:
    table = Table(title=f"run {run.run_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    started = None if run.started_at is None else run.started_at.isoformat()
    ended = None if run.ended_at is None else run.ended_at.isoformat()
    rows: list[tuple[str, str | Text]] = [
        ("run id", run.run_id),
        ("status", _status_text(run)),
        ("state", _or_dash(run.state)),
        ("started", _or_dash(started)),
        ("ended", _or_dash(ended)),
        ("duration", _format_seconds(run.duration_s)),
        ("host / pid", f"{_or_dash(run.host)} / {_or_dash(run.pid)}"),
        ("rank / world size", f"{_or_dash(run.rank)} / {_or_dash(run.world_size)}"),
        ("device", _or_dash(run.device)),
        ("entry point", _or_dash(run.entry_point)),
        ("root", str(run.root)),
    ]
    for field, value in rows:
        table.add_row(field, value if isinstance(value, Text) else Text(value))
    return table


def _clock_time(moment: datetime) -> str:
    """``HH:MM:SS.mmm`` of a timestamp (the date is in the run summary)."""
    return moment.strftime("%H:%M:%S.%f")[:-3]


def _timeline_table(transitions: Sequence[TransitionRecord]) -> Table:
    # No rules and no row numbers: the five columns then fit in 80 characters.
    table = Table(title="lifecycle timeline", box=None, header_style="bold underline")
    table.add_column("at (UTC)", no_wrap=True)
    table.add_column("transition", no_wrap=True)
    table.add_column("step", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("result", overflow="fold", min_width=6)
    for record in transitions:
        result = Text("ok", style="green") if record.ok else Text(f"error: {record.error}", "red")
        table.add_row(
            _clock_time(record.started_at),
            Text(f"{record.source.value} -> {record.dest.value}"),
            Text(record.step),
            _format_seconds(record.duration_s),
            result,
        )
    if not transitions:
        table.add_row("-", Text("no transitions recorded"), "-", "-", "-")
    return table


def _files_table(run_dir: Path, files: dict[str, list[str]]) -> Table:
    from orchestrator_fsm.lifecycle.record import JOURNAL_FILE, RUN_FILE

    table = Table(title="files")
    table.add_column("path", no_wrap=True)
    table.add_column("contents", overflow="fold")
    for name in (RUN_FILE, JOURNAL_FILE):
        present = (run_dir / name).is_file()
        table.add_row(Text(name), Text("present" if present else "missing"))
    for folder, names in files.items():
        shown = ", ".join(names[:_FILES_SHOWN]) or "(empty)"
        if len(names) > _FILES_SHOWN:
            shown += f", ... and {len(names) - _FILES_SHOWN} more"
        table.add_row(Text(f"{folder}/"), Text(shown))
    return table


# -- validate ----------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace, out: Console, err: Console) -> int:
    loaded = _config_or_exit_code(args, err)
    if isinstance(loaded, int):
        return loaded
    cfg = loaded
    from orchestrator_fsm.phases.guarding import resolve_lock_path

    hardware, lock = cfg.hardware, cfg.infrastructure.lock
    if lock.enabled:
        lock_text = f"{resolve_lock_path(cfg)} (wait up to {lock.timeout_s:g}s)"
    else:
        lock_text = "disabled"
    workers = hardware.effective_num_workers
    table = Table(title=f"{cfg.source or args.recipe}: valid", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field, value in (
        ("dataset", cfg.dataset.name),
        ("architecture", cfg.architecture.name),
        ("seed", str(cfg.training.seed)),
        ("device", hardware.device),
        ("reproducible", f"{hardware.reproducible} ({workers} loader workers)"),
        ("output dir", str(cfg.telemetry.output_dir)),
        ("lock", lock_text),
        ("config hash", cfg.config_hash()[:12]),
    ):
        table.add_row(field, Text(value))
    out.print(table)
    return EXIT_OK


# -- parser and main ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``orchestrator-fsm`` (each sub-command sets ``handler``)."""
    from orchestrator_fsm.diagrams import FORMATS

    parser = argparse.ArgumentParser(
        prog="orchestrator-fsm",
        description="Run, draw and inspect the lifecycle of machine-learning experiments.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set training.seed=7 (repeatable; YAML scalars)",
    )

    run = commands.add_parser(
        "run",
        parents=[overrides],
        help="run a pipeline inside the lifecycle (default: the bundled demo)",
        description="Run a pipeline inside the lifecycle. Exit codes: 0 completed, "
        "1 failed, 2 config or --entry error, 130 interrupted.",
    )
    run.add_argument(
        "recipe", nargs="?", metavar="RECIPE", help="YAML recipe (default: the bundled demo)"
    )
    run.add_argument(
        "--entry",
        metavar="MODULE:FUNCTION",
        help="the pipeline, called as FUNCTION(orchestrator); MODULE may be a file "
        "path/to/file.py (default: the bundled demo pipeline)",
    )
    run.add_argument("--debug", action="store_true", help="show the traceback when the run fails")
    run.set_defaults(handler=_cmd_run)

    diagram = commands.add_parser(
        "diagram", help="draw the lifecycle state machine from its transition table"
    )
    diagram.add_argument("--format", choices=FORMATS, default="mermaid")
    diagram.add_argument(
        "--output", metavar="PATH", help="write to PATH (atomically) instead of stdout"
    )
    diagram.set_defaults(handler=_cmd_diagram)

    inspect = commands.add_parser(
        "inspect", help="show a run's status, lifecycle timeline, error and files"
    )
    inspect.add_argument("run_dir", metavar="RUN_DIR")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead")
    inspect.set_defaults(handler=_cmd_inspect)

    validate = commands.add_parser(
        "validate", parents=[overrides], help="check a recipe and summarise it"
    )
    validate.add_argument("recipe", metavar="RECIPE")
    validate.set_defaults(handler=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace, Console, Console], int] | None = getattr(
        args, "handler", None
    )
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args, Console(), Console(stderr=True))
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted", style="red")
        return EXIT_INTERRUPTED
