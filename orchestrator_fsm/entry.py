"""Entry points: the pipeline callable that ``--entry module:function`` names, or the
script that ``--script train.py`` (a recipe's ``entry: train.py``) runs as ``__main__``.

:func:`resolve_entry` imports the module (or the file ``path/to/file.py``) and walks
to the callable; :func:`entry_search_path` puts the directories it is looked up in
first on ``sys.path`` for as long as the run needs them. Other callables named the same
way (the recipe's signal callbacks) go through :func:`resolve_callable`.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import os
import runpy
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from orchestrator_fsm._fs import slugify
from orchestrator_fsm._specs import is_entry_spec, is_script_spec
from orchestrator_fsm.errors import EntryPointError

__all__ = [
    "ScriptExited",
    "entry_module",
    "entry_schema",
    "entry_search_dirs",
    "entry_search_path",
    "is_script_spec",
    "resolve_callable",
    "resolve_entry",
    "run_script",
    "script_entry",
]


class ScriptExited(RuntimeError):
    """A script run as the pipeline called ``sys.exit`` with a failure status."""


def _looks_like_file(module_part: str) -> bool:
    return module_part.endswith(".py") or "/" in module_part or os.sep in module_part


def _split_entry(spec: str, named_by: str) -> tuple[str, str]:
    if not is_entry_spec(spec):
        raise EntryPointError(
            f"{named_by} must be 'module:function' or 'path/to/file.py:function'; got {spec!r}"
        )
    module_part, _, attr_path = spec.rpartition(":")
    return module_part, attr_path


def entry_module(spec: str) -> str:
    """The module part of ``spec`` as it was given: ``pkg.mod`` or ``path/to/file.py``."""
    return spec.rpartition(":")[0] or spec


def entry_search_dirs(spec: str) -> list[str]:
    """Where the entry's module (and what it imports) is found: like ``python -m`` or
    ``python file.py``, the working directory or the file's own directory."""
    module_part = spec if is_script_spec(spec) else spec.rpartition(":")[0]
    if module_part and _looks_like_file(module_part):
        return [str(Path(module_part).expanduser().resolve().parent)]
    return [os.getcwd()]


@contextlib.contextmanager
def entry_search_path(spec: str) -> Iterator[None]:
    """Within the block, :func:`entry_search_dirs` of ``spec`` come first on ``sys.path``
    (those not there already; they are removed again after)."""
    added = [d for d in entry_search_dirs(spec) if d not in sys.path]
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


def resolve_entry(spec: str) -> Callable[[Any], object]:
    """The callable named by ``spec``: ``module:function`` or ``path/to/file.py:function``.

    ``function`` may be a dotted path (``module:Class.method``). A module is looked up
    on ``sys.path``; run from the CLI, the working directory is searched first. Raises
    ``EntryPointError`` saying what is wrong: no colon, module or file not found, an
    import that failed, a missing attribute (with close matches), not a callable, or a
    callable that cannot be called with the orchestrator alone, so that a wrong
    signature is found before the run starts, not inside it.
    """
    entry: Callable[[Any], object] = resolve_callable(spec)
    _check_called_with_one_argument(entry, spec)
    return entry


def entry_schema(entry: object, spec: str) -> dict[str, type]:
    """The schema ``entry`` declares for its recipe sections (see
    :func:`orchestrator_fsm.pipeline_schema`); an ``EntryPointError`` when it is not one."""
    from orchestrator_fsm.config.schema import schema_of

    try:
        return schema_of(entry)
    except (TypeError, ValueError) as exc:
        raise EntryPointError(f"--entry {spec!r} declares an unusable schema: {exc}") from exc


def _check_called_with_one_argument(target: Callable[..., object], spec: str) -> None:
    import inspect

    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin or extension without one: cannot tell
        return
    try:
        signature.bind(object())
    except TypeError as exc:
        name = getattr(target, "__name__", spec.rpartition(":")[2])
        raise EntryPointError(
            f"--entry {spec!r} is called as {name}(orchestrator), but it is "
            f"{name}{signature} ({exc}); it must take the orchestrator as its one "
            "required argument"
        ) from None


def resolve_callable(
    spec: str, *, named_by: str = "--entry", takes: str = "the orchestrator"
) -> Callable[..., object]:
    """:func:`resolve_entry` for any callable: ``named_by`` says, in errors, what gave
    ``spec`` (an option, a recipe field) and ``takes`` what the callable is called with."""
    module_part, attr_path = _split_entry(spec, named_by)
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
            raise EntryPointError(
                f"{where!r} has no attribute {name!r} ({named_by} {spec!r}){hint}"
            )
        target = getattr(target, name)
        walked.append(name)
    if not callable(target):
        raise EntryPointError(
            f"{named_by} {spec!r} names an object of type {type(target).__name__}, not a "
            f"callable; it must be a function taking {takes}"
        )
    found: Callable[..., object] = target
    return found


def script_entry(path: str, argv: Sequence[str] = ()) -> Callable[[Any], None]:
    """The pipeline that runs the script at ``path`` as :func:`run_script` does, with
    ``argv`` as its arguments; an ``EntryPointError`` when there is no such file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise EntryPointError(f"script not found: {path!r} (looked for {file.absolute()})")
    arguments = tuple(argv)

    def run_script_entry(orchestrator: object) -> None:
        run_script(file, arguments)

    return run_script_entry


def run_script(path: Path, argv: Sequence[str]) -> None:
    """Run the file ``path`` as ``python path ARGV`` would: as ``__main__``, with
    ``sys.argv`` ``[path, *argv]`` and its folder first on ``sys.path`` (both restored
    after). ``sys.exit()`` or ``sys.exit(0)`` ends it normally; another status is a
    :class:`ScriptExited`."""
    folder = str(path.resolve().parent)
    saved_argv = sys.argv
    sys.argv = [str(path), *argv]
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        # __file__ absolute, as Python gives a script run by path.
        runpy.run_path(os.path.abspath(path), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise ScriptExited(f"{path.name} exited with status {exc.code!r}") from exc
    finally:
        sys.argv = saved_argv
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)
