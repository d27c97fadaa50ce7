"""Charts as geometry for inline SVG: the server lays every bar and point out, a Jinja2 macro
draws it (recsvc/templates/dashboard/charts.html), so a chart needs no script and its labels
are escaped like any text. Hovering shows each value (an SVG ``<title>``, and dashboard.js's
tooltip where scripts run)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MARGIN_LEFT = 72  # room for the y axis's labels
MARGIN_RIGHT = 16
MARGIN_TOP = 12
MARGIN_BOTTOM = 28  # room for the x axis's labels


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    text: str  # the value as shown
    y: float
    width: float
    tone: str  # "main", "base" or "warn": the bar's colour class


@dataclass(frozen=True, slots=True)
class BarChart:
    title: str
    bars: list[Bar]
    width: int
    height: int
    label_width: int
    bar_height: int

    @property
    def plot_width(self) -> int:
        return self.width - self.label_width - 96  # room for the value after the bar


def bar_chart(
    title: str,
    rows: Sequence[tuple[str, float, str, str]],
    width: int = 1000,
    label_width: int = 170,
    row_height: int = 28,
) -> BarChart:
    """Horizontal bars, one per ``(label, value, text, tone)``, longest for the largest."""
    bar_height = row_height - 8
    chart = BarChart(title, [], width, max(len(rows), 1) * row_height + 8, label_width, bar_height)
    largest = max((value for _, value, _, _ in rows), default=0.0)
    for position, (label, value, text, tone) in enumerate(rows):
        length = chart.plot_width * value / largest if largest > 0 else 0.0
        chart.bars.append(Bar(label, text, position * row_height + 4, max(length, 1.0), tone))
    return chart


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    tip: str


@dataclass(frozen=True, slots=True)
class Tick:
    at: float
    label: str


class _Plotted:
    """A chart drawn inside the standard margins (``axes`` in charts.html)."""

    width: int
    height: int

    @property
    def left(self) -> int:
        return MARGIN_LEFT

    @property
    def right(self) -> int:
        return self.width - MARGIN_RIGHT

    @property
    def bottom(self) -> int:
        return self.height - MARGIN_BOTTOM


@dataclass(frozen=True, slots=True)
class LineChart(_Plotted):
    title: str
    width: int
    height: int
    path: str  # the SVG path through the points
    points: list[Point]
    x_ticks: list[Tick]
    y_ticks: list[Tick]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value`` (an
    axis's top that quarters into round numbers)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1.0, 2.0, 2.5, 5.0, 10.0) if step * power >= value)


def line_chart(
    title: str,
    points: Sequence[tuple[float, float, str]],
    x_label: Callable[[float], str],
    y_label: Callable[[float], str],
    step: bool = False,
    width: int = 1000,
    height: int = 240,
) -> LineChart:
    """A line through ``(x, y, tip)`` points in x order, from y = 0; ``step``: the value
    holds until the next point (a running total)."""
    ordered = sorted(points)
    xs = [x for x, _, _ in ordered] or [0.0]
    low, high = min(xs), max(xs)
    if high == low:
        low, high = low - 86400.0, high + 86400.0
    top = nice_ceiling(max([y for _, y, _ in ordered] + [0.0]))
    plot_width = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = height - MARGIN_TOP - MARGIN_BOTTOM

    def x_of(value: float) -> float:
        return round(MARGIN_LEFT + plot_width * (value - low) / (high - low), 1)

    def y_of(value: float) -> float:
        return round(MARGIN_TOP + plot_height * (1 - value / top), 1)

    placed = [Point(x_of(x), y_of(y), tip) for x, y, tip in ordered]
    path = ""
    for position, point in enumerate(placed):
        if position == 0:
            path = f"M{point.x},{point.y}"
        elif step:
            path += f" H{point.x} V{point.y}"
        else:
            path += f" L{point.x},{point.y}"
    x_ticks = [Tick(x_of(value), x_label(value)) for value in (low, (low + high) / 2, high)]
    y_ticks = [
        Tick(y_of(top * share), y_label(top * share)) for share in (0.0, 0.25, 0.5, 0.75, 1.0)
    ]
    return LineChart(title, width, height, path, placed, x_ticks, y_ticks)


@dataclass(frozen=True, slots=True)
class Segment:
    label: str
    text: str
    x: float
    width: float
    tone: str  # a palette class: "t0", "t1", ...


@dataclass(frozen=True, slots=True)
class StackedRow:
    label: str
    y: float
    segments: list[Segment]


@dataclass(frozen=True, slots=True)
class StackedChart:
    """Each row a whole split into parts (a source's rows by outcome), as one bar."""

    title: str
    rows: list[StackedRow]
    legend: list[tuple[str, str]]  # (part, tone)
    width: int
    height: int
    label_width: int
    bar_height: int


def stacked_chart(
    title: str,
    rows: Sequence[tuple[str, Sequence[tuple[str, float, str]]]],
    parts: Sequence[str],
    width: int = 1000,
    label_width: int = 110,
    row_height: int = 30,
) -> StackedChart:
    """One bar per ``(label, [(part, value, text)])``, its parts in ``parts`` order, each
    part with its own colour; parts worth nothing are left out."""
    tones = {part: f"t{position}" for position, part in enumerate(parts)}
    plot = width - label_width - 8
    laid: list[StackedRow] = []
    for position, (label, values) in enumerate(rows):
        whole = sum(value for _, value, _ in values)
        x = float(label_width)
        segments = []
        for part, value, text in values:
            if value <= 0 or whole <= 0:
                continue
            length = plot * value / whole
            segments.append(Segment(part, text, round(x, 1), round(length, 1), tones[part]))
            x += length
        laid.append(StackedRow(label, position * row_height + 4, segments))
    legend = [(part, tones[part]) for part in parts]
    height = max(len(rows), 1) * row_height + 8
    return StackedChart(title, laid, legend, width, height, label_width, row_height - 10)


@dataclass(frozen=True, slots=True)
class Whisker:
    label: str
    text: str
    y: float
    low: float  # x of the interval's ends and of the estimate
    high: float
    value: float
    tone: str


@dataclass(frozen=True, slots=True)
class IntervalChart:
    """Estimates with their intervals, one row each, on one axis (a difference's zero
    marked)."""

    title: str
    rows: list[Whisker]
    zero: float | None  # x of 0, when the axis crosses it
    ticks: list[Tick]
    width: int
    height: int
    label_width: int


def interval_chart(
    title: str,
    rows: Sequence[tuple[str, float | None, float | None, float | None, str]],
    value_label: Callable[[float], str],
    width: int = 1000,
    label_width: int = 170,
    row_height: int = 30,
) -> IntervalChart:
    """One row per ``(label, value, low, high, text)``; a row without a value is left
    blank (too little data)."""
    known = [(v, lo, hi) for _, v, lo, hi, _ in rows if v is not None]
    ends = [x for v, lo, hi in known for x in (v, lo if lo is not None else v, hi or v)]
    low = min(ends + [0.0])
    high = max(ends + [0.0]) or 1.0
    span = (high - low) or 1.0
    low, high = low - span * 0.05, high + span * 0.05
    plot = width - label_width - 150  # room for the text after the axis

    def x_of(value: float) -> float:
        return round(label_width + plot * (value - low) / (high - low), 1)

    laid = []
    for position, (label, value, lower, upper, text) in enumerate(rows):
        y = position * row_height + row_height / 2 + 4
        if value is None:
            laid.append(Whisker(label, text, y, -1.0, -1.0, -1.0, f"t{position % 7}"))
            continue
        laid.append(
            Whisker(
                label,
                text,
                y,
                x_of(lower if lower is not None else value),
                x_of(upper if upper is not None else value),
                x_of(value),
                f"t{position % 7}",
            )
        )
    ticks = [Tick(x_of(v), value_label(v)) for v in (low + span * 0.05, high - span * 0.05)]
    zero = x_of(0.0) if low < 0 < high else None
    height = max(len(rows), 1) * row_height + 30
    return IntervalChart(title, laid, zero, ticks, width, height, label_width)


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    tone: str
    path: str  # the estimate
    band: str  # the interval, a closed polygon's points
    points: list[Point]


@dataclass(frozen=True, slots=True)
class SeriesChart(_Plotted):
    title: str
    series: list[Series]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    width: int
    height: int


def series_chart(
    title: str,
    series: Sequence[tuple[str, Sequence[tuple[float, float, float, float, str]]]],
    x_label: Callable[[float], str],
    y_label: Callable[[float], str],
    width: int = 1000,
    height: int = 240,
) -> SeriesChart:
    """A line per ``(name, [(x, value, low, high, tip)])``, with its interval as a band."""
    xs = [x for _, points in series for x, *_ in points] or [0.0]
    left_x, right_x = min(xs), max(xs)
    if left_x == right_x:
        left_x, right_x = left_x - 3600.0, right_x + 3600.0
    top = nice_ceiling(max([hi for _, points in series for *_, hi, _ in points] + [0.0]))
    plot_width = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = height - MARGIN_TOP - MARGIN_BOTTOM

    def x_of(value: float) -> float:
        return round(MARGIN_LEFT + plot_width * (value - left_x) / (right_x - left_x), 1)

    def y_of(value: float) -> float:
        return round(MARGIN_TOP + plot_height * (1 - value / top), 1)

    laid = []
    for position, (name, points) in enumerate(series):
        ordered = sorted(points)
        placed = [Point(x_of(x), y_of(value), tip) for x, value, _, _, tip in ordered]
        path = " ".join(f"{'M' if i == 0 else 'L'}{p.x},{p.y}" for i, p in enumerate(placed))
        upper = [f"{x_of(x)},{y_of(hi)}" for x, _, _, hi, _ in ordered]
        lower = [f"{x_of(x)},{y_of(lo)}" for x, _, lo, _, _ in reversed(ordered)]
        laid.append(Series(name, f"t{position % 7}", path, " ".join(upper + lower), placed))
    x_ticks = [Tick(x_of(v), x_label(v)) for v in (left_x, (left_x + right_x) / 2, right_x)]
    y_ticks = [Tick(y_of(top * share), y_label(top * share)) for share in (0.0, 0.5, 1.0)]
    return SeriesChart(title, laid, x_ticks, y_ticks, width, height)
