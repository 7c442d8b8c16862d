"""Server-rendered SVG line charts (no script, no library): latency over time, deliveries
against failures, queue age. Pure: numbers in, an SVG string out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

WIDTH = 560
HEIGHT = 180
PAD_LEFT = 48
PAD_RIGHT = 12
PAD_TOP = 14
PAD_BOTTOM = 26


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    css: str  # the stroke class in ops.css (ok, bad, warn, info)
    values: list[float | None]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(value)))
    for step in (0.1, 0.2, 0.25, 0.5, 1.0):
        if value <= magnitude * step:
            return magnitude * step
    return float(magnitude)


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def line_chart(title: str, times: list[datetime], series: list[Series], unit: str) -> Markup:
    """An SVG chart of ``series`` over ``times`` (one point per time; None is a gap)."""
    count = max(len(times), 1)
    top = max((v for s in series for v in s.values if v is not None), default=0.0)
    y_max = _nice_max(top)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(i: int) -> float:
        return PAD_LEFT + (plot_w * i / (count - 1) if count > 1 else plot_w / 2)

    def y(v: float) -> float:
        return PAD_TOP + plot_h * (1 - v / y_max)

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    ]
    for fraction in (0.0, 0.5, 1.0):
        gy = PAD_TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line class="grid" x1="{PAD_LEFT}" y1="{gy:.1f}" x2="{WIDTH - PAD_RIGHT}" '
            f'y2="{gy:.1f}"/><text class="axis" x="{PAD_LEFT - 4}" y="{gy + 4:.1f}" '
            f'text-anchor="end">{escape(_fmt(y_max * fraction))}</text>'
        )
    if times:
        for index in (0, count - 1):
            anchor = "start" if index == 0 else "end"
            parts.append(
                f'<text class="axis" x="{x(index):.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">'
                f"{escape(times[index].strftime('%H:%M'))}</text>"
            )
    parts.append(f'<text class="axis" x="{PAD_LEFT}" y="{PAD_TOP - 3}">{escape(unit)}</text>')
    for legend, line in enumerate(series):
        segments: list[list[str]] = [[]]
        for index, value in enumerate(line.values):
            if value is None:
                if segments[-1]:
                    segments.append([])
                continue
            segments[-1].append(f"{x(index):.1f},{y(value):.1f}")
        for points in segments:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                parts.append(f'<circle class="line {line.css}" cx="{cx}" cy="{cy}" r="2"/>')
            elif points:
                parts.append(f'<polyline class="line {line.css}" points="{" ".join(points)}"/>')
        lx = WIDTH - PAD_RIGHT - 120 * (len(series) - legend)
        parts.append(
            f'<text class="legend {line.css}" x="{lx}" y="{PAD_TOP - 3}">{escape(line.name)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text above is escaped
