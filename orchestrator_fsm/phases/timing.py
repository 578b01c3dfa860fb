"""How long the run took, as a whole and per lifecycle step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import datetime, timezone

__all__ = ["TimeTracker", "format_duration"]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_duration(seconds: float) -> str:
    """Render a duration for people.

    Under a minute to a tenth of a second (``"45.5s"``), under an hour in whole minutes
    and seconds (``"2m 5s"``), above that with hours too (``"1h 2m 5s"``). Which of the
    three applies is decided after rounding, so 59.96 s reads ``"1m 0s"``, not
    ``"60.0s"``. Negative input is shown as 0; non-finite input raises ``ValueError``.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number of seconds, got {seconds!r}")
    seconds = max(0.0, float(seconds))
    tenths = f"{seconds:.1f}"
    if float(tenths) < 60:
        return f"{tenths}s"
    minutes, secs = divmod(math.floor(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s"


class TimeTracker:
    """Measures the run's duration on the monotonic clock, and each step's duration.

    ``start()`` begins (or restarts) the measurement; ``stop()`` ends it, and only the
    first ``stop()`` after a ``start()`` counts. While running, ``elapsed_seconds`` is
    the time so far; before any ``start()`` it is 0. ``clock`` (seconds, monotonic) and
    ``wall_clock`` (aware UTC datetime) are injectable for tests.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._started: float | None = None
        self._stopped: float | None = None
        self._start_wall: datetime | None = None
        self._phases: dict[str, float] = {}

    def start(self) -> None:
        """Start measuring from now, forgetting any earlier start and stop."""
        self._started = self._clock()
        self._stopped = None
        self._start_wall = self._wall_clock()

    def stop(self) -> float:
        """Stop measuring and return :attr:`elapsed_seconds`.

        Only the first ``stop()`` after a ``start()`` ends the measurement; a later one
        returns the duration already recorded, and one before any ``start()`` returns 0.
        """
        if self._started is not None and self._stopped is None:
            self._stopped = self._clock()
        return self.elapsed_seconds

    @property
    def running(self) -> bool:
        """True between ``start()`` and the first ``stop()``."""
        return self._started is not None and self._stopped is None

    @property
    def elapsed_seconds(self) -> float:
        """Seconds from ``start()`` to ``stop()`` (or to now while running); 0 before."""
        if self._started is None:
            return 0.0
        end = self._stopped if self._stopped is not None else self._clock()
        return max(0.0, end - self._started)

    @property
    def elapsed_formatted(self) -> str:
        """``elapsed_seconds`` for people, e.g. ``"2m 5s"`` (see :func:`format_duration`)."""
        return format_duration(self.elapsed_seconds)

    @property
    def start_wall(self) -> datetime | None:
        """When ``start()`` was last called, as an aware UTC datetime; ``None`` before."""
        return self._start_wall

    def record(self, step: str, duration_s: float) -> None:
        """Add ``duration_s`` seconds to the time spent in lifecycle step ``step``.

        A step recorded twice (a step that ran again) accumulates. Raises ``ValueError``
        for a negative or non-finite duration.
        """
        if not math.isfinite(duration_s) or duration_s < 0:
            raise ValueError(
                f"duration of step {step!r} must be a finite number of seconds >= 0, "
                f"got {duration_s!r}"
            )
        self._phases[step] = self._phases.get(step, 0.0) + float(duration_s)

    @property
    def phase_durations(self) -> dict[str, float]:
        """A copy of ``{step: seconds}`` in the order the steps were first recorded."""
        return dict(self._phases)
