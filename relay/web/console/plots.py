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
MAX_BARS = 360  # longer spans are drawn with a bar per several minutes
WIDTH, HEIGHT = 720, 150
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 12, 22


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


def bar_chart(title: str, series: Sequence[Series], start_ms: int, minutes: int) -> Markup:
    """Stacked bars from `start_ms` (a minute start) over `minutes`: one bar per minute, or
    per several minutes when that would be more than MAX_BARS bars."""
    per = -(-minutes // MAX_BARS)  # minutes per bar
    step_ms = per * MINUTE_MS
    bars = -(-minutes // per)
    sums = [_buckets(s.values, start_ms, step_ms, bars) for s in series]
    unit = "per minute" if per == 1 else f"per {per} minutes"
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    totals = [sum(col) for col in zip(*sums, strict=True)] if sums else []
    top = _nice_max(max(totals, default=0))
    bar_w = plot_w / bars
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
    mark_ms = 3_600_000 * max(1, -(-minutes // 60) // 12)  # at most about 12 hour marks
    span_ms = bars * step_ms
    for mark in range(-(-start_ms // mark_ms) * mark_ms, start_ms + span_ms, mark_ms):
        x = LEFT + (mark - start_ms) * plot_w / span_ms
        out.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" '
                   f'y2="{TOP + plot_h}"/>')
        out.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 6}" '
                   f'text-anchor="middle">{_hhmm(mark)}</text>')
    for i, total in enumerate(totals):
        if total == 0:
            continue
        minute = start_ms + i * step_ms
        x = LEFT + i * bar_w
        parts = ", ".join(f"{counts[i]} {s.label}" for s, counts in zip(series, sums,
                                                                        strict=True))
        out.append(f"<g><title>{_hhmm(minute)} UTC: {escape(parts)}</title>")
        y = TOP + plot_h
        for s, counts in zip(series, sums, strict=True):
            n = counts[i]
            if n <= 0:
                continue
            h = plot_h * n / top
            y -= h
            out.append(f'<rect class="{escape(s.css)}" x="{x:.2f}" y="{y:.2f}" '
                       f'width="{max(bar_w - 0.4, 0.6):.2f}" height="{h:.2f}"/>')
        out.append("</g>")
    out.append(f'<text class="axis" x="{WIDTH - RIGHT}" y="{TOP - 2}" '
               f'text-anchor="end">{escape(unit)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _buckets(values: Mapping[int, int], start_ms: int, step_ms: int, bars: int) -> list[int]:
    out = [0] * bars
    for minute, n in values.items():
        i = (minute - start_ms) // step_ms
        if 0 <= i < bars:
            out[i] += n
    return out
