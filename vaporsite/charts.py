"""Line charts drawn on the server as inline SVG: no script, no CDN, nothing for a browser to fetch.

`line_chart` draws one or two series over a time span: a title with the last
value of each series beside it, a y axis in the series' unit (%, MiB or B/s,
scaled to KiB/MiB/GiB as the values need) with gridlines, an x axis with
local times, a gap wherever samples are missing (the lines break instead of
bridging the hole), and an empty state with the caller's sentence when there
is nothing to draw. Every piece of text is escaped; colours come from a fixed
palette, never from the caller. Styling uses classes (`vapor-chart-*`) that
the including page styles, so the admin's dark theme applies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = {
    "blue": "#2f6fdf",
    "purple": "#8a4fd8",
    "teal": "#14908a",
    "orange": "#dd7420",
    "green": "#3b9a3b",
    "rose": "#d2437a",
}
UNITS = ("%", "MiB", "B/s")
WIDTH, HEIGHT = 480, 190
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 10, 24  # the plot's margins inside the SVG
MAX_HOVER_POINTS = 200  # points with a tooltip per line; beyond that the line alone
SPARSE_POINTS = 20  # up to this many points a line shows a dot at each


@dataclass(frozen=True)
class Line:
    """One series: `label` (e.g. "read"), its points oldest first, a colour name of PALETTE."""

    label: str
    points: Sequence[tuple[datetime, float]]
    color: str = "blue"


def _scaled(value: float, unit: str) -> tuple[float, str]:
    """`value` in a unit a person reads at a glance: MiB may become GiB, B/s KiB/s, MiB/s or GiB/s."""
    if unit == "%":
        return value, "%"
    steps = ("MiB", "GiB", "TiB") if unit == "MiB" else ("B/s", "KiB/s", "MiB/s", "GiB/s")
    index = 0
    while abs(value) >= 1024 and index < len(steps) - 1:
        value /= 1024
        index += 1
    return value, steps[index]


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".removesuffix(".0")
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _axis_label(value: float, unit: str, top: float) -> str:
    """A gridline's label in the unit of the axis' top (so the bottom reads "0 GiB", not "0 MiB")."""
    scaled_top, shown = _scaled(top, unit)
    return f"{_number(value * scaled_top / top if top else 0.0)} {shown}"


def format_value(value: float, unit: str) -> str:
    """`value` (in %, MiB or B/s) as text with its unit, e.g. "12.5 %", "1.5 GiB", "312 KiB/s"."""
    scaled, shown = _scaled(value, unit)
    return f"{_number(scaled)} {shown}"


def _axis(peak: float, unit: str, ceiling: float | None) -> tuple[float, float]:
    """The y axis' top and its step between gridlines: 0-100 by 25 for percentages; else round steps
    (1, 2, 2.5 or 5 times a power of ten, in the unit the axis is labelled in) up to the peak or the ceiling."""
    if unit == "%":
        return 100.0, 25.0
    floor = 1.0 if unit == "MiB" else 1024.0  # an idle disk draws at the bottom of a 0-1 KiB/s axis, not full height
    peak = max(peak, ceiling or 0.0, floor)
    base = 1024.0 ** math.floor(math.log(peak, 1024))  # the unit the axis is labelled in
    scaled = peak / base
    raw = scaled / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(f * magnitude for f in (1, 2, 2.5, 5, 10) if f * magnitude >= raw * 0.9999)
    top = math.ceil(scaled / step - 1e-9) * step
    return top * base, step * base


def _time_step(span: timedelta) -> timedelta:
    for minutes in (1, 2, 5, 10, 15, 30, 60, 120, 180, 240, 360):
        if span / timedelta(minutes=minutes) <= 7:
            return timedelta(minutes=minutes)
    return timedelta(hours=12)


def _segments(points: Sequence[tuple[datetime, float]], gap: timedelta) -> list[list[tuple[datetime, float]]]:
    """The points cut wherever two neighbours are more than `gap` apart: one list per unbroken run."""
    runs: list[list[tuple[datetime, float]]] = []
    for point in points:
        if runs and point[0] - runs[-1][-1][0] <= gap:
            runs[-1].append(point)
        else:
            runs.append([point])
    return runs


def _attrs(**values: object) -> str:
    return " ".join(f'{name.rstrip("_").replace("_", "-")}="{escape(str(value))}"' for name, value in values.items())


def _tag(name: str, text: str = "", **values: object) -> str:
    return f"<{name} {_attrs(**values)}>{escape(text)}</{name}>"


def line_chart(
    *,
    title: str,
    unit: str,
    lines: Sequence[Line],
    start: datetime,
    end: datetime,
    gap: timedelta,
    empty: str,
    ceiling: float | None = None,
    ident: str = "chart",
) -> SafeString:
    """A <figure> holding the chart as inline SVG (or the empty state), safe to put in a page as it is.

    `unit` is one of UNITS and is the unit of the points' values; `gap` is the
    longest distance between two points that is still drawn as a line.
    `ident` names the figure (`data-chart`), for tests and styling.
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")
    drawn = [line for line in lines if line.points]
    header = [f'<span class="vapor-chart-title">{escape(title)}</span>']
    for line in drawn:
        color = PALETTE.get(line.color, PALETTE["blue"])
        label = f"{line.label} " if len(lines) > 1 else ""
        of = f" of {format_value(ceiling, unit)}" if ceiling and unit != "%" else ""
        header.append(
            f'<span class="vapor-chart-last"><i style="background:{color}"></i>{escape(label)}'
            f"<b>{escape(format_value(line.points[-1][1], unit))}</b>{escape(of)}</span>"
        )
    head = f'<figcaption class="vapor-chart-head">{"".join(header)}</figcaption>'
    if not drawn:
        body = f'<div class="vapor-chart-empty">{escape(empty)}</div>'
        return mark_safe(f'<figure class="vapor-chart is-empty" {_attrs(data_chart=ident)}>{head}{body}</figure>')  # noqa: S308 - every piece escaped above
    return mark_safe(  # noqa: S308 - every piece escaped in _svg
        f'<figure class="vapor-chart" {_attrs(data_chart=ident)}>{head}{_svg(title, unit, lines, start, end, gap, ceiling)}</figure>'
    )


def _svg(title: str, unit: str, lines: Sequence[Line], start: datetime, end: datetime, gap: timedelta, ceiling: float | None) -> str:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = max((end - start).total_seconds(), 1.0)
    peak = max((value for line in lines for _at, value in line.points), default=0.0)
    top, step_value = _axis(peak, unit, ceiling)

    def x(at: datetime) -> float:
        return LEFT + plot_w * min(max((at - start).total_seconds() / span, 0.0), 1.0)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - min(max(value / top, 0.0), 1.0))

    parts = [
        f'<svg class="vapor-chart-svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" preserveAspectRatio="xMidYMid meet">',
        _tag("title", f"{title}, {format_value(0, unit).split(' ', 1)[1]}"),
    ]
    for i in range(round(top / step_value) + 1):  # gridlines and y labels at every step up to the top
        value = step_value * i
        parts.append(f'<line class="vapor-chart-grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>')
        label = _axis_label(value, unit, top)
        parts.append(_tag("text", label, class_="vapor-chart-label", x=LEFT - 6, y=f"{y(value) + 4:.1f}", text_anchor="end"))
    step = _time_step(end - start)
    local_start = timezone.localtime(start) if timezone.is_aware(start) else start
    tick = local_start.replace(second=0, microsecond=0)
    minutes = int(step.total_seconds() // 60)
    if minutes >= 60:
        tick = tick.replace(minute=0)
        tick += timedelta(hours=-(tick.hour % (minutes // 60)))
    else:
        tick = tick.replace(minute=tick.minute - tick.minute % minutes)
    while tick <= end:
        if tick >= start:
            px = x(tick)
            parts.append(f'<line class="vapor-chart-tick" x1="{px:.1f}" x2="{px:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM + 4}"/>')
            if LEFT + 16 <= px <= WIDTH - RIGHT - 16:  # a label too near an edge would be cut off: its gridline alone
                when = tick.strftime("%H:%M")
                parts.append(_tag("text", when, class_="vapor-chart-label", x=f"{px:.1f}", y=HEIGHT - 8, text_anchor="middle"))
        tick += step
    if ceiling and unit != "%" and ceiling < top:
        parts.append(f'<line class="vapor-chart-ceiling" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(ceiling):.1f}" y2="{y(ceiling):.1f}"/>')
    parts.append(f'<line class="vapor-chart-axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>')
    for index, line in enumerate(lines):
        color = PALETTE.get(line.color, PALETTE["blue"])
        for run in _segments(line.points, gap):
            coords = " ".join(f"{x(at):.1f},{y(value):.1f}" for at, value in run)
            if len(run) == 1:
                at, value = run[0]
                parts.append(f'<circle cx="{x(at):.1f}" cy="{y(value):.1f}" r="2.5" fill="{color}"/>')
                continue
            if index == 0:  # the first series gets a soft area under it
                area = f"{x(run[0][0]):.1f},{y(0):.1f} {coords} {x(run[-1][0]):.1f},{y(0):.1f}"
                parts.append(f'<polygon class="vapor-chart-area" points="{area}" fill="{color}"/>')
            parts.append(f'<polyline class="vapor-chart-line" points="{coords}" stroke="{color}"/>')
        sparse = len(line.points) <= SPARSE_POINTS  # few points: each one shown, not only the line between them
        if len(line.points) <= MAX_HOVER_POINTS:
            for at, value in line.points:
                local = timezone.localtime(at) if timezone.is_aware(at) else at
                tip = f"{local:%H:%M}  {line.label + ' ' if len(lines) > 1 else ''}{format_value(value, unit)}"
                dot = f'class="vapor-chart-dot is-shown" fill="{color}"' if sparse else 'class="vapor-chart-dot"'
                parts.append(f'<circle {dot} cx="{x(at):.1f}" cy="{y(value):.1f}" r="{2.5 if sparse else 4}">{_tag("title", tip)}</circle>')
    parts.append("</svg>")
    return "".join(parts)
