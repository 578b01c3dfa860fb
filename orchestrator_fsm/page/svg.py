"""The page's charts as inline SVG text: line plots of metrics (decimated to the
plot's pixels, NaN and ±inf marked), a Gantt chart of steps, and the fallback
lifecycle drawing when Graphviz is not installed.

Small and dependency-free on purpose: the page must open with no network and stay
small with 100,000 points, which a JavaScript plotting bundle (Plotly's is ~3.5 MB)
would not allow; SVG also prints sharp and needs no script at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Final

import attrs

__all__ = ["Bar", "GanttRow", "Marker", "PlotSeries", "decimate", "gantt_svg", "line_plot_svg"]

#: Colours of series, one per rank (or run), cycling; Tableau 20 (its ten colours,
#: then their light variants), readable on white: 16 ranks get 16 colours.
PALETTE: Final = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
    "#a0cbe8", "#ffbe7d", "#8cd17d", "#f1ce63", "#499894",
    "#d37295", "#b6992d", "#86bcb6", "#fabfd2", "#d4a6c8",
)  # fmt: skip
#: Dash patterns telling attempts apart (the first attempt solid).
DASHES: Final = ("", "6 3", "2 2", "8 3 2 3")

_PLOT_W: Final = 720
_PLOT_H: Final = 240
_LEFT: Final = 58
_RIGHT: Final = 12
_TOP: Final = 14
_BOTTOM: Final = 30


@attrs.frozen
class PlotSeries:
    """One line of a plot: its label, colour and dash pattern, and its points."""

    label: str
    color: str
    dash: str
    xs: Sequence[float]
    ys: Sequence[float]
    rank: int = 0
    attempt: int = 1


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round numbers spanning ``low``..``high``."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def decimate(
    xs: Sequence[float], ys: Sequence[float], buckets: int, x_low: float, x_high: float
) -> list[tuple[float, float]]:
    """The points of a series worth drawing at ``buckets`` pixels across: all of them
    when few, else per pixel column the first, lowest, highest and last finite point
    (M4 decimation: the drawn line looks the same), and every non-finite value
    (at most one of each kind per column) so that none goes unmarked."""
    if len(xs) <= 4 * buckets:
        return list(zip(xs, ys, strict=True))
    span = (x_high - x_low) or 1.0
    columns: dict[int, list[tuple[float, float]]] = {}
    odd: dict[tuple[int, str], tuple[float, float]] = {}
    order: list[int] = []
    for x, y in zip(xs, ys, strict=True):
        column = min(buckets - 1, max(0, int((x - x_low) / span * buckets)))
        if not math.isfinite(y):
            odd.setdefault((column, repr(y)), (x, y))
            continue
        kept = columns.get(column)
        if kept is None:
            columns[column] = [(x, y), (x, y), (x, y), (x, y)]
            order.append(column)
            continue
        if y < kept[1][1]:
            kept[1] = (x, y)
        if y > kept[2][1]:
            kept[2] = (x, y)
        kept[3] = (x, y)
    points: list[tuple[float, float]] = []
    for column in order:
        first, low, high, last = columns[column]
        chosen = sorted({first, low, high, last}, key=lambda p: p[0])
        points.extend(chosen)
    # Non-finite values break the line where they were; put them back in x order.
    if odd:
        points.extend(odd.values())
        points.sort(key=lambda p: p[0])
    return points


def line_plot_svg(
    series: Sequence[PlotSeries], *, title: str, x_label: str = "step", plot_id: str = ""
) -> str:
    """A line plot of ``series`` (NaN, +inf and -inf drawn as markers at the bottom
    and top edges, breaking the line), with axes and ticks."""
    width = _PLOT_W - _LEFT - _RIGHT
    height = _PLOT_H - _TOP - _BOTTOM
    finite_x = [x for s in series for x in (s.xs[0], s.xs[-1]) if s.xs]
    x_low, x_high = (min(finite_x), max(finite_x)) if finite_x else (0.0, 1.0)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    drawn = [decimate(s.xs, s.ys, width, x_low, x_high) for s in series]
    finite_y = [y for points in drawn for _, y in points if math.isfinite(y)]
    y_low, y_high = (min(finite_y), max(finite_y)) if finite_y else (0.0, 1.0)
    if y_high == y_low:
        y_low, y_high = y_low - 1, y_high + 1
    pad = (y_high - y_low) * 0.05
    y_low, y_high = y_low - pad, y_high + pad

    def px(x: float) -> float:
        return _LEFT + (x - x_low) / (x_high - x_low) * width

    def py(y: float) -> float:
        return _TOP + (y_high - y) / (y_high - y_low) * height

    parts = [
        f'<svg class="plot" id="{escape(plot_id)}" data-series="{len(series)}" '
        f'viewBox="0 0 {_PLOT_W} {_PLOT_H}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<rect class="frame" x="{_LEFT}" y="{_TOP}" width="{width}" height="{height}"/>',
    ]
    for tick in nice_ticks(y_low, y_high):
        ty = _fmt(py(tick))
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + width}" y1="{ty}" y2="{ty}"/>'
            f'<text class="tick" x="{_LEFT - 6}" y="{ty}" text-anchor="end" '
            f'dominant-baseline="middle">{_tick_label(tick)}</text>'
        )
    for tick in nice_ticks(x_low, x_high, 6):
        tx = _fmt(px(tick))
        parts.append(
            f'<line class="grid" x1="{tx}" x2="{tx}" y1="{_TOP}" y2="{_TOP + height}"/>'
            f'<text class="tick" x="{tx}" y="{_TOP + height + 14}" '
            f'text-anchor="middle">{_tick_label(tick)}</text>'
        )
    parts.append(
        f'<text class="axis-label" x="{_LEFT + width}" y="{_PLOT_H - 2}" '
        f'text-anchor="end">{escape(x_label)}</text>'
    )
    markers = []
    for item, points in zip(series, drawn, strict=True):
        path: list[str] = []
        pen_up = True
        for x, y in points:
            if not math.isfinite(y):
                pen_up = True
                markers.append(_non_finite_marker(px(x), y, item))
                continue
            path.append(f"{'M' if pen_up else 'L'}{_fmt(px(x))} {_fmt(py(y))}")
            pen_up = False
        dash = f' stroke-dasharray="{item.dash}"' if item.dash else ""
        # A lone point draws as a dot.
        dot = ' stroke-linecap="round" stroke-width="5"' if len(path) == 1 else ""
        parts.append(
            f'<path class="series" data-rank="{item.rank}" data-attempt="{item.attempt}" '
            f'stroke="{item.color}"{dash}{dot} d="{"".join(path)}">'
            f"<title>{escape(item.label)}</title></path>"
        )
    parts.extend(markers)
    parts.append("</svg>")
    return "".join(parts)


def _non_finite_marker(x: float, y: float, item: PlotSeries) -> str:
    """A triangle at the top edge for +inf, at the bottom for -inf, a cross on the
    bottom edge for NaN; each says what and where in its tooltip."""
    top, bottom = _TOP, _PLOT_H - _BOTTOM
    if math.isnan(y):
        kind, shape = (
            "NaN",
            (f'<path d="M{_fmt(x - 4)} {bottom - 4}l8 8m0 -8l-8 8" stroke-width="2"/>'),
        )
    elif y > 0:
        kind, shape = "+inf", f'<path d="M{_fmt(x)} {top}l-5 9h10z"/>'
    else:
        kind, shape = "-inf", f'<path d="M{_fmt(x)} {bottom}l-5 -9h10z"/>'
    return (
        f'<g class="non-finite" data-kind="{kind}">{shape}'
        f"<title>{kind} · {escape(item.label)}</title></g>"
    )


@attrs.frozen
class Bar:
    """One span on a Gantt row: seconds from the chart's start, its name and kind
    (``ok``, ``failed``, ``interrupted``, ``pipeline``, ``rollback``, ``cleanup``)."""

    start_s: float
    duration_s: float
    name: str
    kind: str
    note: str = ""


@attrs.frozen
class Marker:
    """A moment on the chart: ``kind`` is ``signal``, ``failure`` or ``requeue``."""

    at_s: float
    kind: str
    text: str


@attrs.frozen
class GanttRow:
    label: str
    bars: tuple[Bar, ...]


_GANTT_W: Final = 900
_LABEL_W: Final = 92
_ROW_H: Final = 26


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def gantt_svg(rows: Sequence[GanttRow], markers: Sequence[Marker], *, title: str) -> str:
    """Each row's bars on one time axis (seconds from the first bar), markers as
    vertical lines across every row."""
    ends = [bar.start_s + bar.duration_s for row in rows for bar in row.bars]
    ends += [marker.at_s for marker in markers]
    total = max(ends, default=1.0) or 1.0
    width = _GANTT_W - _LABEL_W - 16
    top = 22
    height = top + _ROW_H * len(rows) + 26

    def px(seconds: float) -> float:
        return _LABEL_W + max(0.0, seconds) / total * width

    parts = [
        f'<svg class="gantt" viewBox="0 0 {_GANTT_W} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    axis_y = top + _ROW_H * len(rows)
    for tick in nice_ticks(0.0, total, 8):
        tx = _fmt(px(tick))
        parts.append(
            f'<line class="grid" x1="{tx}" x2="{tx}" y1="{top - 4}" y2="{axis_y}"/>'
            f'<text class="tick" x="{tx}" y="{axis_y + 14}" text-anchor="middle">'
            f"{_tick_label(tick)}</text>"
        )
    parts.append(
        f'<text class="axis-label" x="{_GANTT_W - 16}" y="{height - 2}" '
        'text-anchor="end">seconds from the attempt\'s start</text>'
    )
    for index, row in enumerate(rows):
        y = top + index * _ROW_H
        parts.append(
            f'<text class="row-label" x="4" y="{y + _ROW_H / 2}" '
            f'dominant-baseline="middle">{escape(row.label)}</text>'
        )
        for bar in row.bars:
            x = px(bar.start_s)
            w = max(2.0, px(bar.start_s + bar.duration_s) - x)
            tip = f"{bar.name}: {_seconds(bar.duration_s)}" + (f" — {bar.note}" if bar.note else "")
            label = ""
            if w > 8 * len(bar.name) * 0.8:
                label = (
                    f'<text class="bar-label" x="{_fmt(x + 4)}" y="{y + _ROW_H / 2}" '
                    f'dominant-baseline="middle">{escape(bar.name)}</text>'
                )
            parts.append(
                f'<g class="bar {bar.kind}" data-step="{escape(bar.name)}">'
                f'<rect x="{_fmt(x)}" y="{y + 4}" width="{_fmt(w)}" height="{_ROW_H - 8}" rx="3"/>'
                f"{label}<title>{escape(tip)}</title></g>"
            )
    for marker in markers:
        mx = _fmt(px(marker.at_s))
        # A label near an edge is anchored on the side that keeps it inside.
        where = (px(marker.at_s) - _LABEL_W) / width
        anchor = "end" if where > 0.85 else "start" if where < 0.15 else "middle"
        parts.append(
            f'<g class="marker {marker.kind}"><line x1="{mx}" x2="{mx}" y1="{top - 6}" '
            f'y2="{axis_y}"/><text x="{mx}" y="{top - 9}" text-anchor="{anchor}">'
            f"{escape(marker.text)}</text><title>{escape(marker.text)}</title></g>"
        )
    parts.append("</svg>")
    return "".join(parts)
