"""The metrics line: one JSON object per ``log_metrics`` / ``log_summary`` call.

A line is ``{"time": ..., "kind": "metrics"|"summary", "rank": N, "step": S|null,
<name>: <value>, ...}``, appended to the rank's metrics file (``layout.metrics_file``).
The recorder writes lines with :func:`metrics_line` after :func:`checked_values` and
:func:`checked_step` accepted what the caller gave; readers (``reproduce/compare.py``)
tell a line's values from its own fields with :func:`line_values`.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

__all__ = [
    "LINE_FIELDS",
    "METRICS_KIND",
    "SUMMARY_KIND",
    "checked_step",
    "checked_values",
    "line_values",
    "metrics_line",
]

#: The fields of a metrics line besides the values; no metric may take these names.
LINE_FIELDS: Final = frozenset({"time", "step", "rank", "kind"})
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
    kind: str, rank: int, step: int | None, values: Mapping[str, float | int], at: datetime
) -> str:
    """The line (newline included) that records ``values`` (already checked) of
    ``kind`` at ``step``, logged by ``rank`` at ``at``."""
    line: dict[str, Any] = {"time": at.isoformat(), "kind": kind, "rank": rank, "step": step}
    line.update(values)
    return json.dumps(line) + "\n"


def line_values(line: Mapping[str, Any]) -> dict[str, Any]:
    """The values a metrics line records, without the line's own fields."""
    return {key: value for key, value in line.items() if key not in LINE_FIELDS}
