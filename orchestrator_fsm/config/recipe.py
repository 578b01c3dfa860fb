"""Reading recipes: the file, the YAML in it, the plain data it must hold, ``--set`` overrides.

YAML is read with PyYAML's safe loader only (tags that would build Python objects are
rejected) and bounded in size, nesting and number of values, so that hostile or broken
input is a ConfigError rather than a hang. Written YAML reads back to the same data.
"""

from __future__ import annotations

import datetime
import math
import numbers
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from orchestrator_fsm.config.problems import Problem, config_error, show
from orchestrator_fsm.errors import ConfigError

__all__ = ["apply_overrides", "dump_yaml", "plain_data", "read_recipe"]

# A recipe is a small document; these bounds turn hostile or broken input (a YAML
# alias bomb, a runaway generator) into a ConfigError instead of a hang.
_MAX_RECIPE_BYTES = 16 * 1024 * 1024
_MAX_VALUES = 100_000
_MAX_DEPTH = 100


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reporting where a value could not be built."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as exc:
            # e.g. a date like 2024-13-45, or "!!int abc": the constructors raise plain
            # errors without a position.
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark
            ) from exc

    def construct_undefined(self, node: yaml.Node) -> Any:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"the tag {node.tag!r} is not allowed: recipes hold plain data only, and tags "
            "that build Python objects are rejected",
            node.start_mark,
        )


_RecipeLoader.add_constructor(None, _RecipeLoader.construct_undefined)


class _RecipeDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, writing every string so that it reads back the same."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        if "\x85" in data:
            # PyYAML may emit NEL (a YAML 1.1 line break) raw inside a plain or quoted
            # scalar, where reading folds it to a space; double quotes escape it as \N.
            return self.represent_scalar("tag:yaml.org,2002:str", data, style='"')
        return super().represent_str(data)


_RecipeDumper.add_representer(str, _RecipeDumper.represent_str)


def dump_yaml(data: Any) -> str:
    """``data`` (plain data) as block-style YAML text that reads back to the same data."""
    return yaml.dump(
        data,
        Dumper=_RecipeDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
    )


class _YamlProblem(Exception):
    pass


def _load_yaml(text: str) -> Any:
    """Parse one YAML document with the safe loader; problems as :class:`_YamlProblem`."""
    try:
        return yaml.load(text, Loader=_RecipeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise _YamlProblem(f"invalid YAML at {where}{what}") from exc
    except yaml.reader.ReaderError as exc:
        raise _YamlProblem(
            f"invalid YAML: character {exc.character!r} at position {exc.position} is not "
            f"allowed ({exc.reason})"
        ) from exc
    except yaml.YAMLError as exc:
        raise _YamlProblem(f"invalid YAML: {exc}") from exc
    except RecursionError as exc:
        raise _YamlProblem("invalid YAML: nested too deeply") from exc


def read_recipe(path: Path, label: str) -> Any:
    """The document in the recipe file at ``path`` (named ``label`` in errors); not None."""

    def fail(message: str) -> ConfigError:
        return config_error(label, [("", message)], source=label)

    try:
        info = path.stat()
    except FileNotFoundError:
        raise fail("no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise fail(f"cannot be read ({_os_reason(exc)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise fail("is a directory, not a recipe file")
    if not stat.S_ISREG(info.st_mode):
        raise fail("is not a regular file")
    if info.st_size > _MAX_RECIPE_BYTES:
        raise fail(f"is {info.st_size} bytes; a recipe may be at most {_MAX_RECIPE_BYTES}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot be read ({_os_reason(exc)})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start} cannot "
            "be decoded)"
        ) from None
    try:
        document = _load_yaml(text)
    except _YamlProblem as exc:
        raise fail(str(exc)) from None
    if document is None:
        raise fail(
            "is empty; a recipe is a mapping with at least dataset.name, "
            "architecture.name and training.seed"
        )
    return document


def _os_reason(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or str(error)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _TooLarge(Exception):
    pass


def plain_data(document: object) -> tuple[Any, list[tuple[str, str]]]:
    """A fresh copy of ``document`` as plain data, and the problems found on the way.

    Plain data is what JSON can hold: mappings with string keys, lists, strings,
    numbers (NaN excluded: it never equals itself), booleans and null. Tuples become
    lists, other number types int or float, dates and times their ISO-8601 text, path
    objects their string. Anything else, recursive structures, and documents too big
    or too deep are problems.
    """
    problems: list[tuple[str, str]] = []
    count = 0
    ancestors: set[int] = set()

    def text(value: str, path: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            problems.append((path, f"expected valid Unicode text, got {show(value)}"))
        return str(value)

    def walk(node: object, path: str, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > _MAX_VALUES:
            raise _TooLarge
        if isinstance(node, (Mapping, list, tuple)):
            if id(node) in ancestors:
                problems.append((path, "refers to itself (a recursive YAML alias)"))
                return None
            if depth >= _MAX_DEPTH:
                problems.append((path, f"is nested more than {_MAX_DEPTH} levels deep"))
                return None
            ancestors.add(id(node))
            try:
                if isinstance(node, Mapping):
                    out: dict[Any, Any] = {}
                    for key, item in node.items():
                        if isinstance(key, str):
                            key = text(key, path)
                        else:
                            problems.append(
                                (
                                    path,
                                    f"key {show(key)} ({type(key).__name__}) is not a "
                                    "string (quote it in YAML)",
                                )
                            )
                        out[key] = walk(item, _join(path, str(key)), depth + 1)
                    return out
                return [walk(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node)]
            finally:
                ancestors.discard(id(node))
        if node is None or isinstance(node, bool):
            return node
        # numbers.Integral/Real also admit NumPy scalars, common in generated sweeps.
        if isinstance(node, numbers.Integral):
            return int(node)
        if isinstance(node, numbers.Real):
            if math.isnan(node):
                problems.append((path, "expected a number, got NaN (it never equals itself)"))
            return float(node)
        if isinstance(node, str):
            return text(node, path)
        if isinstance(node, (datetime.date, datetime.time)):
            return node.isoformat()
        if isinstance(node, os.PathLike):
            location = os.fspath(node)
            if isinstance(location, str):
                return text(location, path)
        problems.append(
            (
                path,
                "expected plain data (a mapping, list, string, number, boolean or null), "
                f"got {type(node).__name__} {show(node)}",
            )
        )
        return node

    try:
        return walk(document, "", 0), problems
    except _TooLarge:
        message = f"holds more than {_MAX_VALUES} values (a YAML alias expanding too far?)"
        return None, [("", message)]


def _parse_override(text: object) -> tuple[list[str], Any]:
    """``(path segments, value)`` of one ``a.b.c=value`` override; raises :class:`Problem`."""
    if not isinstance(text, str):
        raise Problem(f"malformed override {show(text)}: expected a 'dotted.path=value' string")
    path_text, equals, value_text = text.partition("=")
    if not equals:
        raise Problem(f"malformed override {text!r}: no '=' (expected 'dotted.path=value')")
    segments = [segment.strip() for segment in path_text.split(".", _MAX_DEPTH)]
    if len(segments) > _MAX_DEPTH:
        raise Problem(
            f"malformed override {path_text[:60]!r}...: the path is nested more than "
            f"{_MAX_DEPTH} levels deep"
        )
    if not all(segments):
        raise Problem(
            f"malformed override {text!r}: empty key in path {path_text.strip()!r} "
            "(expected 'dotted.path=value')"
        )
    try:
        value = _load_yaml(value_text)
    except _YamlProblem as exc:
        raise Problem(f"override {text!r}: the value is {exc}") from None
    if isinstance(value, (dict, list)) and not value_text.lstrip().startswith(("[", "{")):
        raise Problem(
            f"override {text!r}: the value {value_text.strip()!r} is not a YAML scalar; "
            "quote it, or write a list as [a, b] and a mapping as {k: v}"
        )
    return segments, value


def apply_overrides(
    data: dict[Any, Any], overrides: Iterable[str]
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Set each override in ``data``; returns ``{dotted path: override}`` and problems."""
    if isinstance(overrides, (str, bytes)):
        raise TypeError(
            f"overrides must be an iterable of 'dotted.path=value' strings, got the single "
            f"string {overrides!r}; wrap it in a list"
        )
    set_by: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for index, override_text in enumerate(overrides):
        try:
            segments, value = _parse_override(override_text)
        except Problem as exc:
            problems.append((f"overrides[{index}]", str(exc)))
            continue
        target = ".".join(segments)
        value, value_problems = plain_data(value)
        if value_problems:
            problems.extend(
                (target, f"override {override_text!r}: {message}") for _, message in value_problems
            )
            continue
        node = data
        for depth, key in enumerate(segments[:-1]):
            child = node.get(key)
            if child is None:  # absent, or an empty section ("augmentation:" alone)
                child = node[key] = {}
            elif not isinstance(child, dict):
                parent = ".".join(segments[: depth + 1])
                problems.append(
                    (
                        target,
                        f"override {override_text!r} cannot set it: {parent} holds "
                        f"{show(child)}, not a mapping",
                    )
                )
                break
            node = child
        else:
            node[segments[-1]] = value
            set_by[target] = override_text
    return set_by, problems
