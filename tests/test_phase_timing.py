from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from orchestrator_fsm.phases.timing import TimeTracker, format_duration


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeWallClock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> TimeTracker:
    return TimeTracker(clock=clock)


def test_elapsed_is_zero_before_start(tracker: TimeTracker, clock: FakeClock) -> None:
    clock.advance(50)
    assert tracker.elapsed_seconds == 0.0
    assert not tracker.running
    assert tracker.start_wall is None


def test_elapsed_while_running_is_time_since_start(tracker: TimeTracker, clock: FakeClock) -> None:
    tracker.start()
    clock.advance(2.5)
    assert tracker.running
    assert tracker.elapsed_seconds == pytest.approx(2.5)
    clock.advance(1.0)
    assert tracker.elapsed_seconds == pytest.approx(3.5)


def test_stop_freezes_elapsed_and_returns_it(tracker: TimeTracker, clock: FakeClock) -> None:
    tracker.start()
    clock.advance(4.0)
    assert tracker.stop() == pytest.approx(4.0)
    clock.advance(100.0)
    assert not tracker.running
    assert tracker.elapsed_seconds == pytest.approx(4.0)


def test_second_stop_keeps_and_returns_the_first(tracker: TimeTracker, clock: FakeClock) -> None:
    tracker.start()
    clock.advance(4.0)
    tracker.stop()
    clock.advance(6.0)
    second = tracker.stop()
    assert isinstance(second, float)
    assert second == pytest.approx(4.0)
    assert tracker.elapsed_seconds == pytest.approx(4.0)


def test_stop_before_start_returns_zero_and_does_nothing(
    tracker: TimeTracker, clock: FakeClock
) -> None:
    clock.advance(7.0)
    before = tracker.stop()
    assert isinstance(before, float)
    assert before == 0.0
    tracker.start()
    clock.advance(3.0)
    assert tracker.running
    assert tracker.elapsed_seconds == pytest.approx(3.0)


def test_start_again_resets_the_measurement(tracker: TimeTracker, clock: FakeClock) -> None:
    tracker.start()
    clock.advance(10.0)
    tracker.stop()
    clock.advance(5.0)
    tracker.start()
    clock.advance(1.5)
    assert tracker.running
    assert tracker.elapsed_seconds == pytest.approx(1.5)


def test_start_wall_is_the_utc_time_of_the_latest_start(clock: FakeClock) -> None:
    wall = FakeWallClock()
    tracker = TimeTracker(clock=clock, wall_clock=wall)
    tracker.start()
    first = tracker.start_wall
    wall.now += timedelta(minutes=5)
    tracker.start()
    assert first == datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert tracker.start_wall == datetime(2024, 5, 1, 12, 5, 0, tzinfo=timezone.utc)


def test_default_start_wall_is_timezone_aware_utc() -> None:
    tracker = TimeTracker()
    tracker.start()
    assert tracker.start_wall is not None
    assert tracker.start_wall.utcoffset() == timedelta(0)


def test_default_clock_is_monotonic_and_non_negative() -> None:
    tracker = TimeTracker()
    tracker.start()
    first = tracker.elapsed_seconds
    second = tracker.elapsed_seconds
    tracker.stop()
    assert 0.0 <= first <= second <= tracker.elapsed_seconds


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [(45.5, "45.5s"), (125.2, "2m 5s"), (3725.0, "1h 2m 5s")],
)
def test_elapsed_formatted_reads_seconds_then_minutes_then_hours(
    tracker: TimeTracker, clock: FakeClock, elapsed: float, expected: str
) -> None:
    tracker.start()
    clock.advance(elapsed)
    tracker.stop()
    assert tracker.elapsed_formatted == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "0.0s"),
        (0.46, "0.5s"),
        (4.2, "4.2s"),
        (45.5, "45.5s"),
        (59.94, "59.9s"),
        (59.96, "1m 0s"),
        (60.0, "1m 0s"),
        (125.0, "2m 5s"),
        (125.4, "2m 5s"),
        (125.6, "2m 6s"),
        (600.0, "10m 0s"),
        (3599.6, "1h 0m 0s"),
        (3600.0, "1h 0m 0s"),
        (3725.0, "1h 2m 5s"),
        (7505.5, "2h 5m 6s"),
        (90061.0, "25h 1m 1s"),
        (-3.0, "0.0s"),
    ],
)
def test_format_duration(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf])
def test_format_duration_rejects_non_finite_durations(seconds: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        format_duration(seconds)


def test_record_collects_phase_durations_in_first_seen_order(tracker: TimeTracker) -> None:
    tracker.record("seed", 0.25)
    tracker.record("provision", 1.0)
    tracker.record("seed", 0.5)
    assert tracker.phase_durations == {"seed": 0.75, "provision": 1.0}
    assert list(tracker.phase_durations) == ["seed", "provision"]


def test_phase_durations_is_a_copy(tracker: TimeTracker) -> None:
    tracker.record("seed", 0.25)
    tracker.phase_durations["seed"] = 99.0
    assert tracker.phase_durations == {"seed": 0.25}


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_record_rejects_negative_or_non_finite_durations(tracker: TimeTracker, bad: float) -> None:
    with pytest.raises(ValueError, match="'seed'"):
        tracker.record("seed", bad)
    assert tracker.phase_durations == {}
