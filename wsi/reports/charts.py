"""The geometry of a report's charts, drawn as inline SVG by ``templates/charts.html.j2``.

Inline SVG keeps a report one self-contained file, its text searchable (in the PDF too:
WeasyPrint draws SVG), and every label escaped by the template. Coordinates here are SVG
user units (px at 96 dpi); y grows downwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from wsi.reports.calls import ClassCall, RiskCall
from wsi.reports.render import prob

__all__ = ["Bar", "BarChart", "Curve", "KmChart", "class_bars", "km_chart"]

#: risk group colours (lowest risk first), colour-blind safe (Okabe-Ito)
GROUP_COLOURS = ("#009e73", "#e69f00", "#d55e00")


@dataclass(frozen=True)
class Bar:
    label: str
    y: float  #: top of the bar
    width: float  #: the probability's length
    lo: float  #: x of mean - std
    hi: float  #: x of mean + std
    text: str  #: the probability as shown
    std_text: str
    predicted: bool
    negative: bool


@dataclass(frozen=True)
class BarChart:
    """Horizontal bars of class probabilities, 0..1 over ``plot_w``, each +/- one fold std."""

    width: float
    height: float
    left: float  #: x of probability 0
    plot_w: float
    bar_h: float
    bars: list[Bar]
    ticks: list[tuple[float, str]]  #: (x, label) at 0, 25, 50, 75, 100 %


def class_bars(call: ClassCall, negative: str | None) -> BarChart:
    """The class probabilities of ``call`` as a bar chart (in the model's class order)."""
    left, plot_w, row, bar_h, top = 120.0, 300.0, 24.0, 16.0, 8.0
    bars = []
    for i, c in enumerate(call.classes):
        p, sd = call.probabilities[c], call.std.get(c, 0.0)
        bars.append(
            Bar(
                label=c,
                y=top + i * row,
                width=plot_w * p,
                lo=left + plot_w * max(0.0, p - sd),
                hi=left + plot_w * min(1.0, p + sd),
                text=prob(p),
                std_text=f"\u00b1 {100 * sd:.1f}%",
                predicted=c == call.predicted,
                negative=c == negative,
            )
        )
    height = top + len(bars) * row + 22.0
    ticks = [(left + plot_w * f, f"{100 * f:.0f}%") for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return BarChart(left + plot_w + 130.0, height, left, plot_w, bar_h, bars, ticks)


@dataclass(frozen=True)
class Curve:
    label: str
    colour: str
    points: str  #: SVG polyline points of a step function
    slide: bool = False  #: this slide's predicted curve (else a training cohort group's)


@dataclass(frozen=True)
class KmChart:
    """Survival (0..1, y) against time (x) in a plot box; curves as step polylines."""

    width: float
    height: float
    box: tuple[float, float, float, float]  #: x0, y0, x1, y1 of the plot area
    curves: list[Curve]
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]
    x_label: str


def _nice_step(span: float, n: int = 5) -> float:
    raw = span / max(1, n)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _steps(times: list[float], surv: list[float], t_max: float, sx: Any, sy: Any) -> str:
    """Points of a right-continuous step function starting at (0, 1), held to ``t_max``."""
    pts = [(0.0, 1.0)]
    level = 1.0
    for t, s in zip(times, surv, strict=False):
        if t > t_max:
            break
        pts += [(t, level), (t, s)]
        level = s
    pts.append((t_max, level))
    return " ".join(f"{sx(t):.1f},{sy(s):.1f}" for t, s in pts)


def km_chart(call: RiskCall) -> KmChart:
    """The slide's predicted survival curve over the training cohort's Kaplan-Meier curves
    of its risk groups; time in ``call.time_unit``."""
    width, height = 480.0, 290.0
    x0, y0, x1, y1 = 56.0, 12.0, 464.0, 248.0
    ends = [max(c["time"]) for c in call.kaplan_meier.values() if c["time"]] + call.times[-1:]
    t_max = max(ends) if ends else 1.0
    step = _nice_step(t_max)
    t_max = math.ceil(t_max / step) * step

    def sx(t: float) -> float:
        return x0 + (x1 - x0) * t / t_max

    def sy(s: float) -> float:
        return y1 - (y1 - y0) * s

    curves = []
    for name, colour in zip(call.names, GROUP_COLOURS, strict=False):
        km = call.kaplan_meier.get(name)
        if km:
            label = f"{name} risk (training cohort, Kaplan-Meier)"
            curves.append(Curve(label, colour, _steps(km["time"], km["survival"], t_max, sx, sy)))
    if call.times:
        curve = _steps(call.times, call.survival[: len(call.times)], t_max, sx, sy)
        curves.append(Curve("this slide (predicted)", "#000000", curve, slide=True))
    n = int(round(t_max / step))
    x_ticks = [(sx(k * step), f"{k * step:g}") for k in range(n + 1)]
    y_ticks = [(sy(v), f"{100 * v:.0f}%") for v in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return KmChart(
        width,
        height,
        (x0, y0, x1, y1),
        curves,
        x_ticks,
        y_ticks,
        f"time ({call.time_unit})",
    )
