"""Small static SVG charts (lines, histogram, scatter, grouped bars) for self-contained HTML reports.

Every function returns one `<svg>` element as a string: no script, no external reference, every
text escaped. Each data mark carries `class="mark ..."` (a polyline per line series, a rect per bar,
a circle or cross per point) and a `<title>` tooltip, so a reader can hover and a test can count.
Non-finite values are left out; a chart without data says so instead of drawing marks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["PALETTE", "grouped_bars", "histogram", "line_chart", "nice_ticks", "scatter"]

logger = logging.getLogger(__name__)

PALETTE = ("#3366cc", "#dc3912", "#109618", "#ff9900", "#990099", "#0099c6", "#dd4477", "#66aa00", "#b82e2e",
           "#316395")
_WIDTH, _HEIGHT = 640, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 44, 48


def _fmt(value: float) -> str:
    """A pixel coordinate: two decimals, no trailing zeros."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _label(value: float) -> str:
    """A tick label: 4 significant digits, plain notation where it is short."""
    if value == 0:
        return "0"
    text = f"{value:.4g}"
    return text.replace("e+0", "e").replace("e-0", "e-")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _forward(value: float, kind: str) -> float:
    if kind == "log":
        return math.log10(value)
    if kind == "symlog":
        return math.copysign(math.log10(1.0 + abs(value)), value)
    return value


def _inverse(value: float, kind: str) -> float:
    if kind == "log":
        return float(10.0**value)
    if kind == "symlog":
        return math.copysign(10.0 ** abs(value) - 1.0, value)
    return value


@dataclass(frozen=True, slots=True)
class _Scale:
    """Maps data values to pixels in [start, end]; [low, high] is the range after the transform `kind`:
    linear, log (log10, positive values only) or symlog (sign(v) log10(1 + |v|), for wide ranges of both signs)."""

    low: float
    high: float
    start: float
    end: float
    kind: str = "linear"

    @classmethod
    def fit(cls, values: Sequence[float], start: float, end: float, kind: str = "linear",
            include: Sequence[float] = ()) -> _Scale:
        data = [_forward(v, kind) for v in [*values, *include] if math.isfinite(v) and (v > 0 or kind != "log")]
        low, high = (min(data), max(data)) if data else (0.0, 1.0)
        if high == low:
            low, high = low - 0.5, high + 0.5
        pad = (high - low) * (0.02 if kind == "log" else 0.04)
        return cls(low - pad, high + pad, start, end, kind)

    def __call__(self, value: float) -> float:
        return self.start + (_forward(value, self.kind) - self.low) / (self.high - self.low) * (self.end - self.start)

    def ticks(self) -> list[tuple[float, str]]:
        """(data value, label) pairs inside the scale: powers of ten (and 2, 5 times them) on log scales."""
        if self.kind == "linear":
            return [(t, _label(t)) for t in nice_ticks(self.low, self.high)]
        low, high = _inverse(self.low, self.kind), _inverse(self.high, self.kind)
        top = max(abs(low), abs(high), 1e-300)
        for multiples in ((1,), (1, 2, 5), (1, 2, 3, 5, 7)):
            values = [m * 10.0**k for k in range(math.floor(math.log10(top)) - 12, math.ceil(math.log10(top)) + 1)
                      for m in multiples]
            if self.kind == "symlog":
                values = [0.0, *[v for v in values if v >= 1], *[-v for v in values if v >= 1]]
            inside = sorted({v for v in values if low <= v <= high})
            if len(inside) >= 3:
                break
        if len(inside) < 2:
            inside = [v for v in nice_ticks(low, high) if v > 0 or self.kind != "log"]
        inside = inside[:: math.ceil(len(inside) / 8)]
        return [(v, _label(v)) for v in inside]


def _finite(xs: Sequence[float], ys: Sequence[float], log_x: bool = False,
            log_y: bool = False) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)
            if math.isfinite(x) and math.isfinite(y) and (x > 0 or not log_x) and (y > 0 or not log_y)]


def _open(title: str, width: int, height: int) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
            'font-family="sans-serif" font-size="11">',
            f"<title>{escape(title)}</title>",
            f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">'
            f"{escape(title)}</text>"]


def _axes(x: _Scale, y: _Scale, x_label: str, y_label: str, width: int, height: int,
          x_ticks: Sequence[tuple[float, str]] | None = None, bottom_margin: int = _BOTTOM,
          slant: bool = False) -> list[str]:
    """The plot frame, grid, tick labels (`x_ticks` instead of round values; `slant`ed) and axis titles."""
    top, bottom, left, right = _TOP, height - bottom_margin, _LEFT, width - _RIGHT
    parts = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
             'fill="none" stroke="#999"/>']
    for value, text in x.ticks() if x_ticks is None else x_ticks:
        px = _fmt(x(value))
        label = (f'<text x="{px}" y="{bottom + 15}" text-anchor="middle">{escape(text)}</text>' if not slant
                 else f'<text x="{px}" y="{bottom + 10}" text-anchor="end" transform="rotate(-35 {px} {bottom + 10})">'
                 f"{escape(text)}</text>")
        parts.append(f'<line x1="{px}" y1="{bottom}" x2="{px}" y2="{bottom + 4}" stroke="#999"/>{label}')
    for value, text in y.ticks():
        py = _fmt(y(value))
        parts.append(f'<line x1="{left}" y1="{py}" x2="{right}" y2="{py}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{py}" text-anchor="end" dominant-baseline="middle">'
                     f"{escape(text)}</text>")
    parts.append(f'<text x="{(left + right) / 2}" y="{height - 10}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text x="14" y="{(top + bottom) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(top + bottom) / 2})">{escape(y_label)}</text>')
    return parts


def _symbol(kind: str, x: float, colour: str) -> str:
    if kind == "cross":
        return (f'<path d="M{_fmt(x - 4)},27L{_fmt(x + 4)},35M{_fmt(x - 4)},35L{_fmt(x + 4)},27" '
                f'stroke="{colour}" stroke-width="2"/>')
    if kind == "dot":
        return f'<circle cx="{_fmt(x)}" cy="31" r="3" fill="{colour}"/>'
    return f'<rect x="{_fmt(x - 5)}" y="26" width="10" height="10" fill="{colour}"/>'


def _legend(entries: Sequence[tuple[str, str, str]], width: int) -> list[str]:
    """One row of (name, colour, symbol kind: box, dot or cross) keys under the title, right-aligned."""
    parts, x = [], float(width - _RIGHT)
    for name, colour, kind in reversed(entries):
        x -= 16 + 6.5 * len(name)
        parts.append(f'<g class="legend">{_symbol(kind, x + 5, colour)}<text x="{_fmt(x + 13)}" y="35">'
                     f"{escape(name)}</text></g>")
        x -= 8
    return parts


def _empty(parts: list[str], width: int, height: int, message: str) -> str:
    parts.append(f'<text class="empty" x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#666">'
                 f"{escape(message)}</text></svg>")
    return "".join(parts)


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str, x_label: str,
               y_label: str, log_y: bool = False, log_x: bool = False, x_ticks: Sequence[float] | None = None,
               width: int = _WIDTH, height: int = _HEIGHT) -> str:
    """One polyline (with a dot per point) per named series of (xs, ys); `x_ticks` labels those x values."""
    parts = _open(title, width, height)
    clean = {name: _finite(xs, ys, log_x=log_x, log_y=log_y) for name, (xs, ys) in series.items()}
    points = [p for pts in clean.values() for p in pts]
    if not points:
        return _empty(parts, width, height, "no data")
    x = _Scale.fit([p[0] for p in points], _LEFT, width - _RIGHT, "log" if log_x else "linear")
    y = _Scale.fit([p[1] for p in points], height - _BOTTOM, _TOP, "log" if log_y else "linear")
    ticks = None if x_ticks is None else [(t, _label(t)) for t in x_ticks if math.isfinite(t) and (t > 0 or not log_x)]
    parts += _axes(x, y, x_label, y_label, width, height, x_ticks=ticks)
    for i, (name, pts) in enumerate(clean.items()):
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{_fmt(x(a))},{_fmt(y(b))}" for a, b in pts)
        parts.append(f'<polyline class="mark line" data-series="{escape(name)}" points="{coords}" fill="none" '
                     f'stroke="{colour}" stroke-width="1.5"><title>{escape(name)}</title></polyline>')
        parts += [f'<circle cx="{_fmt(x(a))}" cy="{_fmt(y(b))}" r="1.8" fill="{colour}">'
                  f"<title>{escape(name)}: {_label(a)}, {_label(b)}</title></circle>" for a, b in pts]
    parts += _legend([(name, PALETTE[i % len(PALETTE)], "box") for i, name in enumerate(clean)], width)
    return "".join(parts) + "</svg>"


def histogram(values: Sequence[float], *, title: str, x_label: str, y_label: str = "records", bins: int = 40,
              marker: float | None = None, marker_label: str = "", log_x: bool = False,
              width: int = _WIDTH, height: int = _HEIGHT) -> str:
    """Counts of `values` in `bins` equal-width bins (in log10 when `log_x`) and a vertical line at `marker`."""
    parts = _open(title, width, height)
    data = [float(v) for v in values if math.isfinite(v) and (v > 0 or not log_x)]
    if not data:
        return _empty(parts, width, height, "no data")
    include = [marker] if marker is not None and math.isfinite(marker) else []
    x = _Scale.fit(data, _LEFT, width - _RIGHT, "log" if log_x else "linear", include=include)
    counts = [0] * bins
    for v in data:
        t = ((math.log10(v) if log_x else v) - x.low) / (x.high - x.low)
        counts[min(bins - 1, max(0, int(t * bins)))] += 1
    y = _Scale(0.0, max(counts) * 1.05, height - _BOTTOM, _TOP)
    parts += _axes(x, y, x_label, y_label, width, height)
    edge_width = (x.end - x.start) / bins
    for i, count in enumerate(counts):
        if count == 0:
            continue
        low = x.low + (x.high - x.low) * i / bins
        high = x.low + (x.high - x.low) * (i + 1) / bins
        lo_v, hi_v = (10**low, 10**high) if log_x else (low, high)
        top = y(count)
        parts.append(f'<rect class="mark bar" x="{_fmt(x.start + i * edge_width)}" y="{_fmt(top)}" '
                     f'width="{_fmt(max(edge_width - 1, 0.5))}" height="{_fmt(y.start - top)}" fill="{PALETTE[0]}">'
                     f"<title>{_label(lo_v)} .. {_label(hi_v)}: {count}</title></rect>")
    if include:
        px = _fmt(x(include[0]))
        parts.append(f'<line class="threshold" x1="{px}" y1="{_TOP}" x2="{px}" y2="{height - _BOTTOM}" '
                     f'stroke="{PALETTE[1]}" stroke-width="2" stroke-dasharray="5 3">'
                     f"<title>{escape(marker_label)} {_label(include[0])}</title></line>"
                     f'<text x="{px}" y="{_TOP - 4}" text-anchor="middle" fill="{PALETTE[1]}">'
                     f"{escape(marker_label)}</text>")
    return "".join(parts) + "</svg>"


def _point(cx: float, cy: float, outlier: bool, colour: str, tip: str) -> str:
    if outlier:
        left, right, up, down = _fmt(cx - 4), _fmt(cx + 4), _fmt(cy - 4), _fmt(cy + 4)
        return (f'<path class="mark point outlier" d="M{left},{up}L{right},{down}M{left},{down}L{right},{up}" '
                f'stroke="{colour}" stroke-width="2"><title>{tip}</title></path>')
    return (f'<circle class="mark point" cx="{_fmt(cx)}" cy="{_fmt(cy)}" r="2.2" fill="{colour}" '
            f'fill-opacity="0.45"><title>{tip}</title></circle>')


def scatter(groups: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str, x_label: str,
            y_label: str, highlight: str | None = None, labels: Mapping[str, Sequence[str]] | None = None,
            width: int = _WIDTH, height: int = 420) -> str:
    """Points per named group: circles, and red crosses drawn on top for the `highlight` group.

    `labels[group][i]` is the tooltip of the i-th point of that group (default: its coordinates).
    """
    parts = _open(title, width, height)
    clean = {name: [(float(a), float(b), i) for i, (a, b) in enumerate(zip(xs, ys, strict=True))
                    if math.isfinite(a) and math.isfinite(b)] for name, (xs, ys) in groups.items()}
    points = [p for pts in clean.values() for p in pts]
    if not points:
        return _empty(parts, width, height, "no data")
    x = _Scale.fit([p[0] for p in points], _LEFT, width - _RIGHT)
    y = _Scale.fit([p[1] for p in points], height - _BOTTOM, _TOP)
    parts += _axes(x, y, x_label, y_label, width, height)
    order = sorted(clean, key=lambda name: name == highlight)        # the highlighted group on top
    colours = {name: PALETTE[1] if name == highlight else PALETTE[i % len(PALETTE)] for i, name in enumerate(clean)}
    for name in order:
        tips = (labels or {}).get(name)
        for a, b, i in clean[name]:
            tip = escape(tips[i]) if tips is not None else f"{escape(name)}: {_label(a)}, {_label(b)}"
            parts.append(_point(x(a), y(b), name == highlight, colours[name], tip))
    parts += _legend([(name, colours[name], "cross" if name == highlight else "dot") for name in clean], width)
    return "".join(parts) + "</svg>"


def grouped_bars(categories: Sequence[str], series: Mapping[str, Sequence[float | None]], *, title: str,
                 y_label: str, symlog: bool = False, width: int = 320, height: int = 250) -> str:
    """For each category, one bar per named series side by side (None or non-finite: no bar).

    With `symlog` the value axis is sign(v) log10(1 + |v|): linear near zero, logarithmic far out.
    """
    parts = _open(title, width, height)
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    if not categories or not values:
        return _empty(parts, width, height, "no data")
    bottom_margin = 76
    x = _Scale(0.0, float(len(categories)), _LEFT, width - _RIGHT)
    y = _Scale.fit(values, height - bottom_margin, _TOP, "symlog" if symlog else "linear", include=[0.0])
    ticks = [(i + 0.5, c if len(c) <= 14 else c[:13] + "…") for i, c in enumerate(categories)]
    parts += _axes(x, y, "", y_label, width, height, x_ticks=ticks, bottom_margin=bottom_margin, slant=True)
    slot = (x.end - x.start) / len(categories)
    bar = slot * 0.8 / max(len(series), 1)
    zero = y(0.0)
    for j, (name, vs) in enumerate(series.items()):
        colour = PALETTE[j % len(PALETTE)]
        for i, v in enumerate(vs):
            if v is None or not math.isfinite(v):
                continue
            top, bottom = sorted((y(v), zero))
            left = _fmt(x.start + i * slot + slot * 0.1 + j * bar)
            parts.append(f'<rect class="mark bar" data-series="{escape(name)}" x="{left}" y="{_fmt(top)}" '
                         f'width="{_fmt(bar)}" height="{_fmt(max(bottom - top, 0.5))}" fill="{colour}">'
                         f"<title>{escape(categories[i])} {escape(name)}: {_label(v)}</title></rect>")
    parts.append(f'<line x1="{x.start}" y1="{_fmt(zero)}" x2="{x.end}" y2="{_fmt(zero)}" stroke="#333"/>')
    parts += _legend([(name, PALETTE[j % len(PALETTE)], "box") for j, name in enumerate(series)], width)
    return "".join(parts) + "</svg>"
