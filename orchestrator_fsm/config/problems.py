"""What is wrong with a recipe, and how a ConfigError says so.

A check raises a :class:`Problem` (``str()`` is the description), or :class:`Problems`
for a value with several things wrong, each at its own path below the value. The
builder gathers them as ``(dotted path, description)`` pairs (:func:`problems_at`);
:func:`config_error` renders the list into one
:class:`~orchestrator_fsm.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Collection, Mapping
from typing import Any

from orchestrator_fsm.errors import ConfigError

__all__ = [
    "MISSING",
    "Invalid",
    "Problem",
    "Problems",
    "UnknownKey",
    "config_error",
    "describe",
    "join_path",
    "misspelt_sections",
    "problems_at",
    "show",
    "with_origins",
]

# A ConfigError lists at most this many problems in its message (all are in .problems).
_MAX_LISTED_PROBLEMS = 50
# A top-level key this similar to an absent owned section's name is taken for a typo
# of it (0.85 lets one letter slip in a name of 8, but not an added word).
_MISSPELT_SECTION_SIMILARITY = 0.85


class _MissingType:
    """Stands for a key that is absent, so that checks can say so."""


MISSING: Any = _MissingType()

_short_repr = reprlib.Repr()
_short_repr.maxstring = 80
_short_repr.maxother = 80
_short_repr.maxlevel = 3
_short_repr.maxlist = _short_repr.maxtuple = _short_repr.maxdict = 6


def show(value: object) -> str:
    """``value`` as a short, unambiguous piece of an error message."""
    if value is MISSING:
        return "nothing (it is missing)"
    return _short_repr.repr(value)


class Problem(ValueError):
    """What is wrong with one field; ``str()`` is the human-readable description."""


class Invalid(Problem):
    def __init__(self, expected: str, got: object) -> None:
        super().__init__(f"expected {expected}, got {show(got)}")


class UnknownKey(Problem):
    def __init__(self, key: object, known: list[str]) -> None:
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        super().__init__(f"unknown key {show(key)}; {hint}(valid keys: {', '.join(known)})")


class Problems(Problem):
    """Several things wrong with one value: ``(path below the value, description)`` each."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))
        self.problems = problems


def join_path(path: str, key: str) -> str:
    """The dotted path of ``key`` below ``path`` (``""`` is the top)."""
    return f"{path}.{key}" if path else key


def describe(error: BaseException) -> str:
    """What a check's ``error`` says is wrong: a :class:`Problem` says it itself."""
    if isinstance(error, Problem):
        return str(error)
    return f"invalid value ({type(error).__name__}: {error})"


def problems_at(path: str, error: Exception) -> list[tuple[str, str]]:
    """``(dotted path, description)`` for what ``error``, raised by the check of the
    value at ``path``, says is wrong with it."""
    if isinstance(error, Problems):
        return [(join_path(path, below), message) for below, message in error.problems]
    return [(path, describe(error))]


def misspelt_sections(
    document: Mapping[Any, Any], sections: Collection[str]
) -> list[tuple[str, str]]:
    """A problem for each top-level key of ``document`` that looks like an absent section."""
    # A misspelt owned section ("hardwre:") would otherwise be kept as pipeline data
    # while its settings silently fall back to defaults.
    problems = []
    others = [key for key in document if isinstance(key, str) and key not in sections]
    for section in sections:
        if section in document:
            continue
        for key in others:
            similarity = difflib.SequenceMatcher(None, key.lower(), section).ratio()
            if similarity >= _MISSPELT_SECTION_SIMILARITY:
                problems.append(
                    (key, f"unknown top-level key {key!r}; did you mean the section {section!r}?")
                )
    return problems


def _origin(path: str, set_by: Mapping[str, str]) -> str | None:
    for target, override_text in set_by.items():
        if path == target or path.startswith((f"{target}.", f"{target}[")):
            return override_text
    return None


def with_origins(
    problems: list[tuple[str, str]], set_by: Mapping[str, str]
) -> list[tuple[str, str]]:
    """One problem per path (the first found), each naming the override that set it."""
    seen: set[str] = set()
    result = []
    for path, message in problems:
        if path in seen:
            continue
        seen.add(path)
        override_text = _origin(path, set_by)
        if override_text is not None:
            message = f"{message} (set by override {override_text!r})"
        result.append((path, message))
    return result


def config_error(
    label: str,
    problems: list[tuple[str, str]],
    source: str | None,
    set_by: Mapping[str, str] | None = None,
) -> ConfigError:
    """One ConfigError for ``problems`` (``(dotted path, description)``) found in ``label``.

    A problem at a path an override in ``set_by`` set is not the file's: its line does
    not name ``label``, and the error lists it in ``overridden``.
    """
    overridden = frozenset(
        path for path, _ in problems if set_by and _origin(path, set_by) is not None
    )

    def line(path: str, message: str) -> str:
        if not path:
            return f"{label}: {message}"
        return f"{path}: {message}" if path in overridden else f"{path} in {label}: {message}"

    lines = [line(path, message) for path, message in problems]
    if len(lines) == 1:
        message = lines[0]
    else:
        listed = lines[:_MAX_LISTED_PROBLEMS]
        if len(lines) > len(listed):
            listed.append(f"... and {len(lines) - len(listed)} more")
        message = f"{len(lines)} problems in {label}:\n" + "\n".join(f"  {line}" for line in listed)
    return ConfigError(message, problems=problems, source=source, overridden=overridden)
