"""Reading recipes: the file, the YAML in it, the plain data it must hold, ``--set`` overrides.

YAML is read with the package's safe loader only (:mod:`orchestrator_fsm._yaml`: YAML
1.2's floats, so ``1e-3`` is a number; a key twice in one mapping is an error; tags
that would build Python objects are rejected). Hostile or broken input is a ConfigError
rather than a hang: the file's size, the number of values and the text a document holds
once its aliases are expanded, and its nesting are bounded while it is read, before any
of it is built into Python data.
Written YAML reads back to the same data.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import numbers
import os
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from orchestrator_fsm._yaml import Dumper, DuplicateKey, Loader
from orchestrator_fsm.config.problems import Problem, config_error, show
from orchestrator_fsm.errors import ConfigError

__all__ = ["apply_overrides", "dump_yaml", "load_trusted_yaml", "plain_data", "read_recipe"]

# A recipe is a small document; these bounds turn hostile or broken input (a YAML
# alias bomb, a runaway generator) into a ConfigError instead of a hang. The byte bound
# is also the most text a recipe may hold once its aliases are expanded, and the
# overrides of one run may together be no bigger than a recipe.
_MAX_RECIPE_BYTES = 2 * 1024 * 1024
_MAX_VALUES = 100_000
_MAX_DEPTH = 100
# The most digits Python writes an integer with (sys.int_info.default_max_str_digits):
# a longer one could be validated but not saved as YAML or JSON, nor hashed.
_MAX_INT_DIGITS = 4300
_INT_LIMIT = 10**_MAX_INT_DIGITS

# libyaml reads the text as UTF-8 and reports offsets in bytes, PyYAML in characters.
# (libyaml refuses nesting deeper than 1000 levels by itself; PyYAML's recursive composer
# hits the recursion limit first.)
_OFFSETS_IN_BYTES = not issubclass(Loader, yaml.SafeLoader)

# Open without blocking, so that a FIFO put in the recipe's place after it was checked
# cannot make the read wait forever.
_OPEN_FLAGS = os.O_RDONLY | (os.O_NONBLOCK if sys.platform != "win32" else 0)


class _YamlProblem(Exception):
    """Why a YAML document cannot be read; ``path`` is where in it, when known.

    ``verb`` joins a value to the message ("the value is invalid YAML...", "the value
    holds a duplicate key...").
    """

    def __init__(self, message: str, path: str = "", verb: str = "is") -> None:
        super().__init__(message)
        self.path = path
        self.verb = verb


class _Budget:
    """How many more values and characters of text the documents being read may hold.

    One budget covers one recipe, another all the overrides of one run, so that many
    small documents cannot together hold more than one large one may. ``text`` is what
    the overrides' own text may still take (a recipe's is bounded by its file's size).
    """

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.values = _MAX_VALUES
        self.characters = _MAX_RECIPE_BYTES
        self.text = _MAX_RECIPE_BYTES

    def too_big(self, unit: str, limit: int, *, expanded: bool) -> _YamlProblem:
        how = "once its YAML aliases are expanded" if expanded else "as written"
        return _YamlProblem(f"too big {how}: more than the {limit} {unit} {self.holder}")


class _RecipeLoader(Loader):
    """The package's YAML loader, reporting where a value could not be built.

    It also counts the nodes it composes against ``budget``, so that a document with too
    many values is refused while it is being read.
    """

    def __init__(self, text: str, budget: _Budget) -> None:
        self._budget = budget
        self._keys = 0
        self._values = 0
        super().__init__(text)

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        # Both composers call this before they compose each node, but not for an alias.
        # Every node composed as a value, and every key (each comes with a value), stands
        # for at least one value of the document, so either count passing the budget
        # means the document holds too many values.
        if isinstance(current_node, yaml.MappingNode) and current_index is None:
            self._keys += 1
            count = self._keys
        else:
            self._values += 1
            count = self._values
        if count > self._budget.values:
            raise self._budget.too_big("values", _MAX_VALUES, expanded=False)
        super().descend_resolver(current_node, current_index)

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


def dump_yaml(data: Any) -> str:
    """``data`` (plain data) as block-style YAML text that reads back to the same data."""
    return yaml.dump(
        data,
        Dumper=Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
    )


def _load_yaml(text: str, budget: _Budget, source: str = "") -> Any:
    """Parse one YAML document with the safe loader; problems as :class:`_YamlProblem`.

    A duplicate key's two places are named ``<source>:<line>`` (a file), or by column
    when ``source`` is empty (a one-line override).

    The document is composed (counting its nodes), weighed with its aliases expanded,
    and only then built; what it holds is taken from ``budget``.
    """
    loader: _RecipeLoader | None = None
    try:
        with collector_paused():
            loader = _RecipeLoader(text, budget)
            node = loader.get_single_node()
            if node is None:
                return None
            _weigh_expanded(node, budget)
            return loader.construct_document(node)
    except UnicodeEncodeError as exc:  # libyaml reads UTF-8, which has no lone surrogates
        character = ord(exc.object[exc.start])
        raise _YamlProblem(_bad_character(character, exc.start)) from None
    except DuplicateKey as exc:
        raise _YamlProblem(_duplicate_key(exc, source), exc.path, verb="holds a") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise _YamlProblem(f"invalid YAML at {where}{what}") from exc
    except yaml.reader.ReaderError as exc:
        position = exc.position
        if _OFFSETS_IN_BYTES:
            position = len(text.encode("utf-8")[:position].decode("utf-8", "ignore"))
        raise _YamlProblem(_bad_character(exc.character, position)) from exc
    except yaml.YAMLError as exc:
        raise _YamlProblem(f"invalid YAML: {exc}") from exc
    except RecursionError as exc:
        raise _YamlProblem("invalid YAML: nested too deeply") from exc
    finally:
        if loader is not None:
            loader.dispose()


def _duplicate_key(problem: DuplicateKey, source: str) -> str:
    def place(mark: yaml.Mark) -> str:
        return f"{source}:{mark.line + 1}" if source else f"column {mark.column + 1}"

    return (
        f"duplicate key {show(problem.key)} at {place(problem.again)}, first at "
        f"{place(problem.first)} (the last would silently win; keep one)"
    )


def _bad_character(character: object, position: int) -> str:
    # Each parser gives its own reason ("special"/"control" characters); the rule is one.
    shown = f"U+{character:04X}" if isinstance(character, int) else repr(character)
    return f"invalid YAML: character {shown} at position {position} is not allowed in YAML"


class _Open:
    """A collection node being weighed: its children still to visit, its weight so far."""

    __slots__ = ("characters", "children", "node", "path", "values")

    def __init__(self, node: yaml.Node, path: str) -> None:
        self.node = node
        self.path = path
        self.children = _children(node)
        self.values = 1
        self.characters = 0


def _children(node: yaml.Node) -> Iterator[tuple[yaml.Node, object]]:
    """``(child, label)`` for each child: ``label`` is a list index, the key node of a
    mapping value, or None for a key."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key, None
            yield value, key
    else:
        for index, item in enumerate(node.value):
            yield item, index


def _child_path(path: str, label: object) -> str:
    if isinstance(label, int):
        return f"{path}[{label}]"
    if isinstance(label, yaml.ScalarNode):
        return _join(path, str(label.value))
    return path  # a key, or a value under a key that is not a scalar


def _weigh_expanded(root: yaml.Node, budget: _Budget) -> None:
    """Take from ``budget`` what the document at ``root`` holds with its aliases expanded.

    Values are counted as :func:`plain_data` counts them (each value once per place it
    appears, a scalar key not at all), characters as those of every scalar, keys
    included. An alias makes the node graph a DAG: each node is weighed once and
    remembered, and the walk keeps its own stack, so this costs time linear in the graph
    however far the aliases multiply it, and stops at the first collection found too
    big. A node inside itself (a recursive alias) counts one value where it recurs;
    :func:`plain_data` then reports it.
    """
    if isinstance(root, yaml.ScalarNode):
        if len(root.value) > budget.characters:
            raise budget.too_big("characters of text", _MAX_RECIPE_BYTES, expanded=False)
        budget.values -= 1
        budget.characters -= len(root.value)
        return
    weights: dict[int, tuple[int, int]] = {}
    open_ids = {id(root)}
    stack = [_Open(root, "")]
    expanded = False
    while stack:
        top = stack[-1]
        for child, label in top.children:
            known = weights.get(id(child))
            if known is not None:  # met before: it stands here through an alias
                values, characters = known
                expanded = True
            elif isinstance(child, yaml.ScalarNode):
                values, characters = weights[id(child)] = 1, len(child.value)
            elif id(child) in open_ids:
                values, characters = 1, 0
                expanded = True
            else:
                open_ids.add(id(child))
                stack.append(_Open(child, _child_path(top.path, label)))
                break
            if label is None and isinstance(child, yaml.ScalarNode):
                values = 0  # plain_data does not count a key as a value
            top.values += values
            top.characters += characters
            if top.values > budget.values or top.characters > budget.characters:
                break
        else:
            stack.pop()
            open_ids.discard(id(top.node))
            weights[id(top.node)] = (top.values, top.characters)
            if stack:
                stack[-1].values += top.values
                stack[-1].characters += top.characters
                top = stack[-1]
        if top.values > budget.values:
            problem = budget.too_big("values", _MAX_VALUES, expanded=expanded)
        elif top.characters > budget.characters:
            problem = budget.too_big("characters of text", _MAX_RECIPE_BYTES, expanded=expanded)
        else:
            continue
        problem.path = top.path
        raise problem
    values, characters = weights[id(root)]
    budget.values -= values
    budget.characters -= characters


def load_trusted_yaml(data: bytes) -> Any:
    """``data``, YAML this package wrote itself (a run's saved ``config.yaml``), as plain
    data, read by the same fast safe loader as recipes but without a recipe's limits."""
    return yaml.load(data, Loader=Loader)


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
        raw = _read_at_most(path, _MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot be read ({_os_reason(exc)})") from None
    if raw is None:
        raise fail("is not a regular file")
    if len(raw) > _MAX_RECIPE_BYTES:  # it grew after it was measured
        raise fail(f"is more than {_MAX_RECIPE_BYTES} bytes; a recipe may be at most that")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start} cannot "
            "be decoded)"
        ) from None
    try:
        document = _load_yaml(text, _Budget("a recipe may hold"), source=label)
    except _YamlProblem as exc:
        raise config_error(label, [(exc.path, str(exc))], source=label) from None
    if document is None:
        raise fail(
            "is empty; a recipe is a mapping with at least dataset.name, "
            "architecture.name and training.seed"
        )
    return document


def _read_at_most(path: Path, size: int) -> bytes | None:
    """Up to ``size`` bytes of the file at ``path``; None when it is not a regular file."""
    descriptor = os.open(path, _OPEN_FLAGS)
    with open(descriptor, "rb") as stream:
        # Checked again on what was opened: the path may have been replaced since.
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        return stream.read(size)


def _os_reason(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or str(error)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _TooLarge(Exception):
    pass


def plain_data(document: object, *, depth: int = 0) -> tuple[Any, list[tuple[str, str]]]:
    """A fresh copy of ``document`` as plain data, and the problems found on the way.

    Plain data is what JSON can hold: mappings with string keys, lists, strings,
    numbers (NaN excluded: it never equals itself), booleans and null. Tuples become
    lists, other number types int or float, dates and times their ISO-8601 text, path
    objects their string. Anything else, recursive structures, and documents too big
    or too deep are problems; ``depth`` is how deep ``document`` itself sits.
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
            number = int(node)
            if not -_INT_LIMIT < number < _INT_LIMIT:
                problems.append(
                    (
                        path,
                        f"expected an integer of at most {_MAX_INT_DIGITS} digits, got one "
                        f"of {number.bit_length()} bits",
                    )
                )
            return number
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
        return walk(document, "", depth), problems
    except _TooLarge:
        message = f"holds more than {_MAX_VALUES} values (a YAML alias expanding too far?)"
        return None, [("", message)]


def _parse_override(text: object, budget: _Budget) -> tuple[list[str], Any]:
    """``(path segments, value)`` of one ``a.b.c=value`` override; raises :class:`Problem`.

    The override's text and what its value holds are taken from ``budget``.
    """
    if not isinstance(text, str):
        raise Problem(f"malformed override {show(text)}: expected a 'dotted.path=value' string")
    if len(text) > budget.text:
        raise Problem(
            f"override {show(text)} is too long: all overrides together may be at most "
            f"{_MAX_RECIPE_BYTES} characters, the most a recipe may be"
        )
    budget.text -= len(text)
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
        value = _load_yaml(value_text, budget)
    except _YamlProblem as exc:
        where = f" at {exc.path}" if exc.path else ""
        raise Problem(f"override {text!r}: the value{where} {exc.verb} {exc}") from None
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
    budget = _Budget("all overrides together may hold")
    for index, override_text in enumerate(overrides):
        try:
            segments, value = _parse_override(override_text, budget)
        except Problem as exc:
            problems.append((f"overrides[{index}]", str(exc)))
            continue
        target = ".".join(segments)
        # The value sits as deep as its path is long, and counts from there.
        value, value_problems = plain_data(value, depth=len(segments))
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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the collector (as it was before) around building many long-lived objects.

    Reading YAML creates up to some hundred thousand nodes at once, none of them
    garbage, and the collector walks them all again and again as they pile up: with
    it, composing 100,000 keys took three times as long, and more the more keys.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
