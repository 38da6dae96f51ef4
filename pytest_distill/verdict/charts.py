"""Geometry of the report's inline SVG charts; the template draws what these compute."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: float  # 0..1
    x: float
    y: float
    width: float
    height: float
    whisker: tuple[float, float] | None  # y of the interval's high and low ends
    interval: tuple[float, float] | None


@dataclass(frozen=True, slots=True)
class Tick:
    label: str
    y: float


@dataclass(frozen=True, slots=True)
class BarChart:
    width: float
    height: float
    left: float
    top: float
    plot_height: float
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]


def bar_chart(
    values: Sequence[tuple[str, float, tuple[float, float] | None]],
    *,
    bar_width: float = 72,
    gap: float = 32,
    plot_height: float = 180,
) -> BarChart:
    """One bar per (label, value in 0..1, optional interval); the y axis runs 0 to 1."""
    left, top = 40.0, 12.0

    def y_of(v: float) -> float:
        return top + plot_height * (1 - min(max(v, 0.0), 1.0))

    bars = []
    for n, (label, value, interval) in enumerate(values):
        x = left + gap / 2 + n * (bar_width + gap)
        whisker = (y_of(interval[1]), y_of(interval[0])) if interval else None
        bars.append(
            Bar(label, value, x, y_of(value), bar_width, top + plot_height - y_of(value), whisker,
                interval)
        )  # fmt: skip
    ticks = tuple(Tick(f"{t:.2g}" if t else "0", y_of(t)) for t in (0.0, 0.25, 0.5, 0.75, 1.0))
    width = left + len(values) * (bar_width + gap) + 8
    return BarChart(width, top + plot_height + 36, left, top, plot_height, tuple(bars), ticks)


@dataclass(frozen=True, slots=True)
class LineChart:
    width: float
    height: float
    left: float
    top: float
    plot_width: float
    plot_height: float
    points: str  # SVG polyline points
    dots: tuple[tuple[float, float, float, float], ...]  # (x, y, step, value)
    y_ticks: tuple[Tick, ...]
    x_first: float
    x_last: float


def line_chart(
    points: Sequence[tuple[float, float]], *, plot_width: float = 420, plot_height: float = 150
) -> LineChart | None:
    """(step, value) points, in step order; None with fewer than one point."""
    if not points:
        return None
    left, top = 52.0, 10.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(0.0, min(ys)), max(ys) or 1.0
    x_span, y_span = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0

    def at(step: float, value: float) -> tuple[float, float]:
        return (
            round(left + plot_width * (step - x_low) / x_span, 2),
            round(top + plot_height * (1 - (value - y_low) / y_span), 2),
        )

    placed = [(*at(s, v), s, v) for s, v in points]
    ticks = tuple(
        Tick(f"{y_low + y_span * f:.3g}", top + plot_height * (1 - f)) for f in (0, 0.5, 1)
    )
    return LineChart(
        width=left + plot_width + 16,
        height=top + plot_height + 34,
        left=left,
        top=top,
        plot_width=plot_width,
        plot_height=plot_height,
        points=" ".join(f"{x},{y}" for x, y, _, _ in placed),
        dots=tuple(placed),
        y_ticks=ticks,
        x_first=x_low,
        x_last=x_high,
    )
