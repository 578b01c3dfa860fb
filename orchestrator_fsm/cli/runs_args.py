"""What the ``runs`` command's ``--since`` accepts (its statuses are
:data:`orchestrator_fsm.status.STATUSES`).

Apart from :mod:`orchestrator_fsm.cli.runs` so that building the parser (for every
command, ``--help`` and ``--version`` included) needs only the standard library.
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta, timezone
from typing import Final

__all__ = ["parse_since", "since_argument"]

_AGE = re.compile(r"(?P<amount>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[smhdw])", re.ASCII)
_AGE_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """The moment ``--since`` names: an age (``30m``, ``2h``, ``3d``, ``1w``, ``90s``)
    before ``now``, or an ISO date or time (``2026-12-01``, ``2026-12-01T09:30``; local
    time unless it carries an offset). ``ValueError`` says what was expected."""
    age = _AGE.fullmatch(text.strip())
    if age is not None:
        seconds = float(age.group("amount")) * _AGE_UNITS[age.group("unit")]
        return (now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            "expected an age such as 30m, 2h, 3d or 1w, or an ISO date or time such as "
            f"2026-12-01 or 2026-12-01T09:30, got {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


def since_argument(text: str) -> datetime:
    """``--since`` for argparse: :func:`parse_since`, its error as a usage error."""
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
