"""The metrics line: one JSON object per ``log_metrics`` / ``log_summary`` call.

A line is ``{"time": ..., "kind": "metrics"|"summary", "rank": N, "attempt": A,
"step": S|null, <name>: <value>, ...}``, appended to the rank's metrics file
(``layout.metrics_file``); ``attempt`` is the number of the run's attempt that logged
it (a line written before attempts were recorded in it is attempt 1's, see
:func:`line_attempt`). The recorder writes lines with :func:`metrics_line` after
:func:`checked_values` and :func:`checked_step` accepted what the caller gave;
readers (``reproduce/compare.py``) tell a line's values from its own fields with
:func:`line_values`, and take a run's lines as :func:`effective_lines` (a step a
resumed attempt logged again is the later attempt's). NaN and the infinities, which
JSON cannot write, are the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
(:data:`NON_FINITE`), read back as floats.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

__all__ = [
    "LINE_FIELDS",
    "METRICS_KIND",
    "NON_FINITE",
    "SUMMARY_KIND",
    "checked_step",
    "checked_values",
    "effective_lines",
    "json_number",
    "json_numbers",
    "last_values",
    "line_attempt",
    "line_values",
    "metric_number",
    "metrics_line",
    "number_from_json",
    "read_lines",
    "same_value",
]

#: The fields of a metrics line besides the values; no metric may take these names.
LINE_FIELDS: Final = frozenset({"time", "step", "rank", "kind", "attempt"})
#: The ``kind`` of a ``log_metrics`` line.
METRICS_KIND: Final = "metrics"
#: The ``kind`` of a ``log_summary`` line.
SUMMARY_KIND: Final = "summary"


#: How a line (and ``run.json``) spells the numbers JSON has none for: the names
#: JavaScript and Python's ``float()`` give them. A metric's value is otherwise always a
#: JSON number, so these three strings are never anything else; readers take them back
#: as floats (:func:`number_from_json`).
NON_FINITE: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def json_number(value: float) -> float | str:
    """``value`` as a line holds it: itself when finite, else its name in :data:`NON_FINITE`."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def json_numbers(values: Mapping[str, float]) -> dict[str, float | str]:
    """Each of ``values`` as :func:`json_number` writes it."""
    return {name: json_number(value) for name, value in values.items()}


def number_from_json(value: object) -> float | None:
    """A number a line or ``run.json`` holds (:func:`json_number`'s spellings included);
    None for anything else."""
    if isinstance(value, str):
        return NON_FINITE.get(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def same_value(a: object, b: object) -> bool:
    """Whether two logged values are the same: NaN is the same as NaN (a run that
    diverged to NaN, repeated, logs NaN again)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def metric_number(value: object) -> float | None:
    """``value`` as the number a metric records, or None when it is not one number.

    A number is an int or float (not a bool), any other real number (NumPy's scalars,
    ``Fraction``) as a float, or a tensor or array holding exactly one number (0-d, or
    one element, as ``.item()`` takes it: ``loss``, ``loss.mean()``, ``acc[None]``).
    NaN and infinities are numbers: a diverging loss is recorded as it is.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)
    if item is None or not callable(item):
        return None
    # torch counts elements with numel() (its size is a method), NumPy with size.
    count = value.numel() if hasattr(value, "numel") else getattr(value, "size", None)
    if count != 1:
        return None
    try:
        number = item()
    except Exception:
        return None
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        return None
    return number if isinstance(number, (int, float)) else float(number)


def checked_values(values: object) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """The numbers among ``values`` (names to :func:`metric_number`'s numbers) and, for
    each entry that cannot be recorded, ``(name, why)``: a name that is not a non-empty
    string or is one of the line's own fields, or a value that is not one number.
    ``values`` that is not a non-empty mapping is one problem named ``""``."""
    if not isinstance(values, Mapping) or not values:
        return {}, [("", f"expected a non-empty mapping of names to numbers, got {values!r}")]
    checked: dict[str, float] = {}
    problems: list[tuple[str, str]] = []
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            problems.append((repr(key), f"metric names must be non-empty strings, got {key!r}"))
            continue
        if key in LINE_FIELDS:
            problems.append(
                (
                    key,
                    f"metric {key!r}: the name is one of the line's own fields "
                    f"({', '.join(sorted(LINE_FIELDS))}); choose another",
                )
            )
            continue
        number = metric_number(value)
        if number is None:
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            problems.append(
                (key, f"metric {key!r}: expected a number, got {type(value).__name__} {shown}")
            )
            continue
        checked[key] = number
    return checked, problems


def checked_step(step: object) -> int | None:
    """``step`` as an int when it is None or an integer >= 0 (not a bool; NumPy's
    integers and one-element integer tensors too); else ``ValueError``."""
    if step is None:
        return None
    if isinstance(step, bool):
        raise ValueError(f"step must be an integer >= 0 or None, got {step!r}")
    number = metric_number(step)
    if not isinstance(number, int) and isinstance(step, numbers.Integral):
        number = int(step)
    if not isinstance(number, int) or number < 0:
        raise ValueError(f"step must be an integer >= 0 or None, got {step!r}")
    return number


def metrics_line(
    kind: str,
    rank: int,
    step: int | None,
    values: Mapping[str, float | int],
    at: datetime,
    attempt: int = 1,
) -> str:
    """The line (newline included) that records ``values`` (already checked) of
    ``kind`` at ``step``, logged by ``rank`` in the run's attempt ``attempt`` at ``at``."""
    line: dict[str, Any] = {
        "time": at.isoformat(),
        "kind": kind,
        "rank": rank,
        "attempt": attempt,
        "step": step,
    }
    line.update(json_numbers(values))
    return json.dumps(line, allow_nan=False) + "\n"


def line_attempt(line: Mapping[str, Any]) -> int:
    """The attempt that logged ``line``: its ``attempt`` field, 1 when it has none (a
    line of a version that did not write it) or it is not a positive integer."""
    attempt = line.get("attempt")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        return 1
    return attempt


def effective_lines(lines: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``lines`` (one rank's, in file order) as the run's results: a line with a step
    that a later attempt logged again (same ``kind`` and ``step``: a resumed attempt
    went back to its last checkpoint and redid it) is left out, so each step is the
    last attempt's; lines without a step, and every other line, stay in order."""
    latest: dict[tuple[Any, int], int] = {}
    for line in lines:
        step = line.get("step")
        if isinstance(step, int):
            key = (line.get("kind"), step)
            latest[key] = max(latest.get(key, 0), line_attempt(line))
    kept = []
    for line in lines:
        step = line.get("step")
        if isinstance(step, int) and line_attempt(line) < latest[(line.get("kind"), step)]:
            continue
        kept.append(line)
    return kept


def last_values(
    lines: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, tuple[Any, int | None]], dict[str, Any]]:
    """Per metric name, the last value logged in ``lines`` (file order) and its step,
    and the summary (a later value of a name wins): what a run's record keeps. Lines of
    the last attempt come last in the file, so "last" is that attempt's."""
    metrics: dict[str, tuple[Any, int | None]] = {}
    summary: dict[str, Any] = {}
    for line in lines:
        step = line.get("step")
        values = line_values(line)
        if line.get("kind") == SUMMARY_KIND:
            summary.update(values)
        elif line.get("kind") == METRICS_KIND:
            for name, value in values.items():
                metrics[name] = (value, step if isinstance(step, int) else None)
    return metrics, summary


def line_values(line: Mapping[str, Any]) -> dict[str, Any]:
    """The values a metrics line records, without the line's own fields; NaN and the
    infinities (written as their names, :func:`json_number`) as floats again."""
    return {
        key: NON_FINITE.get(value, value) if isinstance(value, str) else value
        for key, value in line.items()
        if key not in LINE_FIELDS
    }


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The lines of the metrics file ``path`` in file order (none when there is no
    file); a line that is not a JSON object (a torn last line) is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines
