"""The metrics line: one JSON object per ``log_metrics`` / ``log_summary`` call.

A line is ``{"time": ..., "kind": "metrics"|"summary", "rank": N, "attempt": A,
"step": S|null, <name>: <value>, ...}``, appended to the rank's metrics file
(``layout.metrics_file``); ``attempt`` is the number of the run's attempt that logged
it (a line written before attempts were recorded in it is attempt 1's, see
:func:`line_attempt`). The recorder writes lines with :func:`metrics_line` after
:func:`checked_values` and :func:`checked_step` accepted what the caller gave;
readers (``reproduce/compare.py``) tell a line's values from its own fields with
:func:`line_values`, and take a run's lines as :func:`effective_lines` (a step a
resumed attempt logged again is the later attempt's).
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
    "SUMMARY_KIND",
    "checked_step",
    "checked_values",
    "effective_lines",
    "last_values",
    "line_attempt",
    "line_values",
    "metrics_line",
    "read_lines",
]

#: The fields of a metrics line besides the values; no metric may take these names.
LINE_FIELDS: Final = frozenset({"time", "step", "rank", "kind", "attempt"})
#: The ``kind`` of a ``log_metrics`` line.
METRICS_KIND: Final = "metrics"
#: The ``kind`` of a ``log_summary`` line.
SUMMARY_KIND: Final = "summary"


def checked_values(values: Mapping[str, object]) -> dict[str, float | int]:
    """``values`` when every key is a string and every value a finite number (not a
    bool); otherwise ``ValueError`` naming the first bad key."""
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"expected a non-empty mapping of names to numbers, got {values!r}")
    checked: dict[str, float | int] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric names must be non-empty strings, got {key!r}")
        if key in LINE_FIELDS:
            raise ValueError(
                f"metric {key!r}: the name is one of the line's own fields "
                f"({', '.join(sorted(LINE_FIELDS))}); choose another"
            )
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"metric {key!r}: expected a finite number, got {type(value).__name__} {value!r}"
            )
        number = value if isinstance(value, (int, float)) else float(value)
        if not math.isfinite(number):
            raise ValueError(f"metric {key!r}: expected a finite number, got {number!r}")
        checked[key] = number
    return checked


def checked_step(step: object) -> int | None:
    """``step`` when it is None or an integer >= 0 (not a bool); else ``ValueError``."""
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise ValueError(f"step must be an integer >= 0 or None, got {step!r}")
    return step


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
    line.update(values)
    return json.dumps(line) + "\n"


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
    """The values a metrics line records, without the line's own fields."""
    return {key: value for key, value in line.items() if key not in LINE_FIELDS}


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
