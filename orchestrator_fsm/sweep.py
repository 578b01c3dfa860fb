"""Sweeps: the members ``run --multirun`` expands overrides into, and the sweep record.

An override ``key=a,b,c`` (Hydra's comma syntax) or ``key=range(1,4)`` is an axis of
the sweep; a sweep's members are every combination of its axes, in order (the last
axis varies fastest). Commas inside brackets, braces, parentheses or quotes do not
split a value (``key=[1,2]`` is one value).

The record of a sweep is ``<output_dir>/sweeps/<sweep id>/sweep.json`` (written
atomically, rewritten as members end), beside each member's console output
(``member-<n>.log``). Each member is an ordinary run directory in ``output_dir``
whose ``run.json`` names the sweep (``sweep``) and its number in it
(``sweep_member``).
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from orchestrator_fsm._fs import atomic_write_json
from orchestrator_fsm.layout import SWEEP_FILE, SWEEPS_DIR, output_root

__all__ = [
    "expand_sweep",
    "member_run_dirs",
    "new_sweep_id",
    "split_values",
    "write_sweep_record",
]

# The most members one sweep may have: more is almost surely a mistyped range.
_MAX_MEMBERS: Final = 10_000

_RANGE = re.compile(r"range\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?(?:,\s*(-?\d+)\s*)?\)")
_CLOSING = {"[": "]", "{": "}", "(": ")"}


def split_values(text: str) -> list[str]:
    """The values of one swept override's value text: split at top-level commas, or a
    ``range(stop)``, ``range(start, stop[, step])`` of integers. Raises ``ValueError``."""
    stripped = text.strip()
    match = _RANGE.fullmatch(stripped)
    if match is not None:
        numbers = [int(group) for group in match.groups() if group is not None]
        if len(numbers) == 3 and numbers[2] == 0:
            raise ValueError(f"{stripped}: the step of a range cannot be 0")
        counted = [str(number) for number in range(*numbers)]
        if not counted:
            raise ValueError(f"{stripped} is empty")
        return counted
    values: list[str] = []
    closers: list[str] = []
    quote: str | None = None
    current = ""
    for character in text:
        if quote is not None:
            quote = None if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character in _CLOSING:
            closers.append(_CLOSING[character])
        elif closers and character == closers[-1]:
            closers.pop()
        elif character == "," and not closers:
            values.append(current)
            current = ""
            continue
        current += character
    values.append(current)
    if any(not value.strip() for value in values) and len(values) > 1:
        raise ValueError(f"{text!r} has an empty value between its commas")
    return values


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of the swept ``key=a,b`` overrides, each a list of plain
    ``key=value`` overrides. Raises ``ValueError`` naming a malformed one."""
    axes: list[list[str]] = []
    for override in overrides:
        key, equals, value_text = override.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"malformed override {override!r}: expected KEY=VALUE")
        try:
            values = split_values(value_text)
        except ValueError as exc:
            raise ValueError(f"override {override!r}: {exc}") from None
        axes.append([f"{key}={value}" for value in values])
    count = 1
    for axis in axes:
        count *= len(axis)
    if count > _MAX_MEMBERS:
        raise ValueError(f"the sweep has {count} members; at most {_MAX_MEMBERS} are allowed")
    return [list(member) for member in itertools.product(*axes)]


def new_sweep_id(now: datetime | None = None) -> str:
    """A new sweep id: ``YYYYMMDD-HHMMSS-<random hex>``."""
    moment = now or datetime.now(timezone.utc)
    return f"{moment.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def write_sweep_record(directory: Path, record: Mapping[str, Any]) -> None:
    """Atomically (re)write ``directory/sweep.json`` with ``record``."""
    atomic_write_json(directory / SWEEP_FILE, dict(record))


def member_run_dirs(output_dir: Path, since: float) -> Iterator[Path]:
    """Run directories of ``output_dir`` changed at ``since`` (a timestamp) or later;
    hidden entries and the sweeps' folder are not runs."""
    try:
        entries = list(output_root(output_dir).iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") or entry.name == SWEEPS_DIR:
            continue
        try:
            if entry.is_dir() and entry.stat().st_mtime >= since:
                yield entry
        except OSError:
            continue
