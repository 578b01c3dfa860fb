"""How this package reads and writes YAML: one loader and one dumper for every file.

PyYAML follows YAML 1.1, where a float needs a dot: ``lr: 1e-3`` is the *string*
``'1e-3'`` there, and ``1.5e3`` is too. YAML 1.2's core schema, Hydra and OmegaConf read
both as numbers, as anyone who writes them means; so do the loader and dumper here (the
dumper quotes a string that would read back as a number). A mapping that holds the
same key twice is refused (:class:`DuplicateKey`, naming both places) instead of the
last one silently winning.

Both build on libyaml's C parser and emitter where PyYAML has them (some ten and four
times faster); the data built is the same either way.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

import yaml

__all__ = ["Dumper", "DuplicateKey", "FastDumper", "Loader"]

_FLOAT_TAG: Final = "tag:yaml.org,2002:float"
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"

# YAML 1.1's float forms with the exponent's sign optional, plus a mantissa without a dot
# when an exponent follows (YAML 1.2's core schema; the same rule as OmegaConf's).
_FLOAT: Final = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)

if TYPE_CHECKING:  # type-checked as the pure-Python classes: both offer what is used here
    _SafeLoader = yaml.SafeLoader
    _SafeDumper = yaml.SafeDumper
else:
    _SafeLoader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
    _SafeDumper = yaml.CSafeDumper if yaml.__with_libyaml__ else yaml.SafeDumper


def _yaml_1_2_floats(resolvers: dict[Any, list[tuple[str, Any]]]) -> dict[Any, list[Any]]:
    table = {
        first: [(tag, _FLOAT if tag == _FLOAT_TAG else pattern) for tag, pattern in entries]
        for first, entries in resolvers.items()
    }
    for first in "-+0123456789.":  # every character a float may start with
        entries = table.setdefault(first, [])
        if all(tag != _FLOAT_TAG for tag, _ in entries):
            entries.insert(0, (_FLOAT_TAG, _FLOAT))
    return table


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping holds ``key`` twice: ``first`` and ``again`` are the two keys' marks,
    ``path`` the mapping's dotted path in the document ("" at the top)."""

    def __init__(self, key: object, first: yaml.Mark, again: yaml.Mark, path: str) -> None:
        super().__init__(
            None,
            None,
            f"duplicate key {key!r} (first at line {first.line + 1}; the last would win)",
            again,
        )
        self.key = key
        self.first = first
        self.again = again
        self.path = path


class Loader(_SafeLoader):
    """The safe loader with YAML 1.2's floats, refusing a key twice in one mapping."""

    def construct_document(self, node: yaml.Node) -> Any:
        self.refuse_duplicate_keys(node)
        return super().construct_document(node)

    def refuse_duplicate_keys(self, root: yaml.Node) -> None:
        """Raise :class:`DuplicateKey` for the first mapping under ``root`` that holds a
        key twice. A key a merge (``<<: *base``) brings in may be set again: that is
        what a merge is for. Each node is visited once, however often aliases repeat it."""
        visited: set[int] = set()
        stack: list[tuple[yaml.Node, str]] = [(root, "")]
        while stack:
            node, path = stack.pop()
            if isinstance(node, yaml.ScalarNode) or id(node) in visited:
                continue
            visited.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
                continue
            first_marks: dict[Any, yaml.Mark] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    # Built as construct_document will build it (and remembered by the
                    # constructor), so that 1 and 0x1, or 'a' and "a", are one key.
                    key = self.construct_object(key_node)
                    if key in first_marks:
                        raise DuplicateKey(key, first_marks[key], key_node.start_mark, path)
                    first_marks[key] = key_node.start_mark
                    child = f"{path}.{key_node.value}" if path else str(key_node.value)
                else:
                    stack.append((key_node, path))
                    child = path
                stack.append((value_node, child))


class Dumper(yaml.SafeDumper):
    """PyYAML's pure-Python safe dumper, writing strings so that :class:`Loader` reads
    them back the same (``'1e-3'`` quoted, NEL escaped)."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        if "\x85" in data:
            # PyYAML may emit NEL (a YAML 1.1 line break) raw inside a plain or quoted
            # scalar, where reading folds it to a space; double quotes escape it as \N.
            return self.represent_scalar("tag:yaml.org,2002:str", data, style='"')
        return super().represent_str(data)


Dumper.add_representer(str, Dumper.represent_str)


class FastDumper(_SafeDumper):
    """libyaml's safe dumper where PyYAML has it, quoting what :class:`Loader` would read
    as another type. Its text folds long quoted strings at other points than
    :class:`Dumper`'s; the data is the same."""


for _class in (Loader, Dumper, FastDumper):
    _class.yaml_implicit_resolvers = _yaml_1_2_floats(_class.yaml_implicit_resolvers)
