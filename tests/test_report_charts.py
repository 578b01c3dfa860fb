"""The report page's charts without a browser: decimation keeps what a plot must show
(each pixel column's extremes, every NaN and infinity), and without Graphviz the
lifecycle is still drawn with the run's path on it."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator_fsm.lifecycle.machine import TransitionRecord
from orchestrator_fsm.lifecycle.table import LifecycleState as S
from orchestrator_fsm.page.data import AttemptView
from orchestrator_fsm.page.diagram import attempt_marks, path_svg
from orchestrator_fsm.page.svg import PlotSeries, decimate, line_plot_svg


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=3000),
    st.integers(min_value=1, max_value=200),
)
def test_decimation_keeps_each_columns_extremes_and_every_non_finite_kind(
    ys: list[float], buckets: int
) -> None:
    xs = [float(i) for i in range(len(ys))]
    kept = decimate(xs, ys, buckets, xs[0], xs[-1])
    assert len(kept) <= max(len(ys), 4 * buckets + 3 * buckets)
    assert [x for x, _ in kept] == sorted(x for x, _ in kept)
    finite = [y for y in ys if math.isfinite(y)]
    kept_finite = [y for _, y in kept if math.isfinite(y)]
    if finite:
        assert min(kept_finite) == min(finite) and max(kept_finite) == max(finite)
    for kind in (math.isnan, lambda y: y == math.inf, lambda y: y == -math.inf):
        assert any(kind(y) for y in ys) == any(kind(y) for _, y in kept)


def test_a_plot_of_100000_points_draws_a_few_thousand() -> None:
    xs = [float(i) for i in range(100_000)]
    series = [
        PlotSeries("rank 0", "#000", "", xs, [math.sin(x / 500) for x in xs]),
        PlotSeries("rank 1", "#111", "4 2", xs, [math.cos(x / 500) for x in xs]),
    ]
    svg = line_plot_svg(series, title="loss")
    assert svg.count('class="series"') == 2
    points = len(re.findall(r"[ML]\d", svg))
    assert 1000 < points < 8 * 720


def _record(source: S, dest: S, step: str, at: float, ok: bool = True, error: str | None = None):
    start = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=at)
    return TransitionRecord(source, dest, "advance", step, start, 0.01, ok, error)


FAILED_IN_LOCK = AttemptView(
    number=1,
    status="failed",
    reason="LockContendedError: held",
    started_at=None,
    ended_at=None,
    transitions=(
        _record(S.CREATED, S.SEEDED, "seed", 0),
        _record(S.SEEDED, S.CONFIGURED, "configure_runtime", 1),
        _record(S.CONFIGURED, S.PROVISIONED, "provision", 2),
        _record(S.PROVISIONED, S.LOGGED, "init_logging", 3),
        _record(S.LOGGED, S.PERSISTED, "persist_manifest", 4),
        _record(S.PERSISTED, S.GUARDED, "acquire_lock", 5, ok=False, error="LockContended"),
        _record(S.PERSISTED, S.FAILED, "rollback", 6),
    ),
    spans=(),
)


def test_the_marks_name_the_failed_step_and_the_rollback() -> None:
    states, edges = attempt_marks(FAILED_IN_LOCK)
    assert states["persisted"] == "failed" and states["failed"] == "failed"
    assert states["logged"] == "reached" and "ready" not in states
    assert edges[("persisted", "guarded", "acquire_lock")] == "failed"
    assert edges[("any_live", "failed", "rollback")] == "rolled_back"
    assert FAILED_IN_LOCK.undone_steps == [
        "persist_manifest", "init_logging", "provision", "configure_runtime", "seed",
    ]  # fmt: skip


def test_without_graphviz_the_path_is_drawn_on_a_plain_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` there
    svg, graphviz = path_svg(FAILED_IN_LOCK)
    assert graphviz is False
    assert 'class="node failed" id="a1-state-persisted"' in svg
    assert 'class="node reached" id="a1-state-logged"' in svg
    assert 'class="node unvisited" id="a1-state-ready"' in svg


def test_report_without_jinja2_says_how_to_install_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    # As if Jinja2 were not installed: its import is blocked.
    code = (
        "import sys; sys.modules['jinja2'] = None\n"
        "from orchestrator_fsm.cli.main import main\n"
        f"raise SystemExit(main(['report', {str(tmp_path)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert "pip install 'orchestrator-fsm[report]'" in " ".join(result.stderr.split())
