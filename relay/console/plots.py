"""Per-minute bar charts as inline SVG, drawn here (no chart library, no script).

Pure: numbers in, markup out. Every text that ends up in the SVG passes through
`markupsafe.escape`; colours come from classes in console.css (the CSP allows no
inline style).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

MINUTE_MS = 60_000
WIDTH, HEIGHT = 720, 170
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    css: str  # class of its bars (and of its legend swatch)
    values: Mapping[int, int]  # minute start (ms) -> count


def _nice_max(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1)."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def _hhmm(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%H:%M")


def bar_chart(title: str, series: Sequence[Series], start_ms: int, minutes: int,
              unit: str = "per minute") -> Markup:
    """Stacked bars, one per minute from `start_ms` (a minute start) for `minutes`."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    totals = [sum(s.values.get(start_ms + i * MINUTE_MS, 0) for s in series)
              for i in range(minutes)]
    top = _nice_max(max(totals, default=0))
    bar_w = plot_w / minutes
    out = [f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
           f"<title>{escape(title)}</title>"]
    for frac in (0.0, 0.5, 1.0):  # grid lines and the y scale
        y = TOP + plot_h * (1 - frac)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/>')
        value = top * frac
        label = f"{value:g}" if value != int(value) else str(int(value))
        out.append(f'<text class="axis" x="{LEFT - 4}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{label}</text>')
    for i in range(minutes):  # an hour mark wherever a bar starts an hour
        minute = start_ms + i * MINUTE_MS
        if minute % 3_600_000 == 0:
            x = LEFT + i * bar_w
            out.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" '
                       f'y2="{TOP + plot_h}"/>')
            out.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 6}" '
                       f'text-anchor="middle">{_hhmm(minute)}</text>')
    for i, total in enumerate(totals):
        if total == 0:
            continue
        minute = start_ms + i * MINUTE_MS
        x = LEFT + i * bar_w
        parts = ", ".join(f"{s.values.get(minute, 0)} {s.label}" for s in series)
        out.append(f"<g><title>{_hhmm(minute)} UTC: {escape(parts)}</title>")
        y = TOP + plot_h
        for s in series:
            n = s.values.get(minute, 0)
            if n <= 0:
                continue
            h = plot_h * n / top
            y -= h
            out.append(f'<rect class="{escape(s.css)}" x="{x:.2f}" y="{y:.2f}" '
                       f'width="{max(bar_w - 0.4, 0.6):.2f}" height="{h:.2f}"/>')
        out.append("</g>")
    out.append(f'<text class="axis" x="{LEFT}" y="{TOP - 1}">{escape(unit)}</text>')
    out.append("</svg>")
    return Markup("".join(out))
