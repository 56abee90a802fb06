"""The model page's health charts: a ``HealthSeries`` as the geometry of small SVG charts.

Pure: figures in, coordinates and labels out; the template (``_health_charts.html``)
draws them as inline SVG, so the page needs no script and nothing from another site, and
reads the same in a browser with scripts off. One chart per figure (``CHART_FIGURES``),
one line per release (broken where the release went silent for long or the figure was
not measured), a dot per bucket with a tooltip, and the model's alert episodes as
shaded bands on the time axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..monitoring.series import BUCKETS, RANGES_S, HealthPoint, HealthSeries
from .rendering import format_number

__all__ = ["CHART_FIGURES", "Chart", "HealthCharts", "health_charts"]

WIDTH = 720
HEIGHT = 170
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 10, 24
PLOT_W = WIDTH - LEFT - RIGHT
PLOT_H = HEIGHT - TOP - BOTTOM
X_TICKS = 6
# A release's line joins two of its points up to this many buckets apart (devices that
# report every few minutes); a longer silence, or a bucket that had telemetry but not
# this figure, breaks it.
MAX_GAP_BUCKETS = 5
# Series colours (dashboard.css .series-N), reused in turn past the last.
SERIES_CLASSES = 6

# (HealthPoint attribute, title, unit, fixed top of the axis or None: from the data)
CHART_FIGURES: tuple[tuple[str, str, str, float | None], ...] = (
    ("confidence_mean", "Mean top-1 confidence", "", 1.0),
    ("input_drift_psi", "Input drift (PSI against the release's reference)", "", None),
    ("p95_ms", "p95 latency", "ms", None),
    ("error_rate", "Error rate", "", None),
    ("label_accuracy", "Accuracy on labeled requests", "", 1.0),
)
# Charted only when some bucket measured them (most fleets send no labels).
OPTIONAL_FIGURES = frozenset({"label_accuracy"})


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    tip: str


@dataclass(frozen=True)
class Line:
    version: int
    css: str
    segments: list[str]  # SVG polyline points, one per run of measured buckets
    dots: list[Dot]


@dataclass(frozen=True)
class Band:
    x: float
    width: float
    tip: str


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    lines: list[Line]
    y_ticks: list[Tick]
    measured: bool  # False: no release measured this figure in the range


@dataclass(frozen=True)
class HealthCharts:
    range: str
    ranges: list[str]
    start: datetime
    end: datetime
    bucket_s: int
    empty: bool  # no telemetry at all in the range
    truncated: bool
    covered_from: datetime | None
    versions: list[tuple[int, str]]  # legend: version, css class
    charts: list[Chart]
    bands: list[Band]
    x_ticks: list[Tick]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM


def health_charts(series: HealthSeries) -> HealthCharts:
    span_s = (series.end - series.start).total_seconds()
    css = {
        release.version: f"series-{index % SERIES_CLASSES}"
        for index, release in enumerate(series.releases)
    }
    charts = []
    for key, title, unit, top in CHART_FIGURES:
        chart = _chart(series, css, key, f"{title} ({unit})" if unit else title, unit, top)
        if chart.measured or key not in OPTIONAL_FIGURES:
            charts.append(chart)
    return HealthCharts(
        range=series.range,
        ranges=list(RANGES_S),
        start=series.start,
        end=series.end,
        bucket_s=series.bucket_s,
        empty=not series.releases,
        truncated=series.truncated,
        covered_from=series.covered_from,
        versions=list(css.items()),
        charts=charts,
        bands=[
            Band(x=x, width=max(right - x, 2.0), tip=tip)
            for x, right, tip in (
                (
                    _x_at(series, alert.started_at, span_s),
                    _x_at(series, alert.ended_at or series.end, span_s),
                    f"alert: {alert.metric} on version {alert.version}, "
                    f"{_clock(alert.started_at)} to "
                    f"{_clock(alert.ended_at) if alert.ended_at else 'now (open)'}",
                )
                for alert in series.alerts
            )
        ],
        x_ticks=[
            Tick(
                at=LEFT + PLOT_W * index / (X_TICKS - 1),
                label=_tick_label(
                    series.start + (series.end - series.start) * index / (X_TICKS - 1), span_s
                ),
            )
            for index in range(X_TICKS)
        ],
    )


def _chart(
    series: HealthSeries,
    css: dict[int, str],
    key: str,
    title: str,
    unit: str,
    top: float | None,
) -> Chart:
    values = [
        value
        for release in series.releases
        for point in release.points
        if (value := getattr(point, key)) is not None
    ]
    y_max = top if top is not None else _nice_ceiling(max(values, default=0.0))
    lines = [
        _line(series, release.version, release.points, css[release.version], key, unit, y_max)
        for release in series.releases
    ]
    ticks = [
        Tick(at=_y(y_max * share, y_max), label=format_number(y_max * share))
        for share in (0, 0.5, 1)
    ]
    return Chart(key=key, title=title, lines=lines, y_ticks=ticks, measured=bool(values))


def _line(
    series: HealthSeries,
    version: int,
    points: Sequence[HealthPoint],
    css: str,
    key: str,
    unit: str,
    y_max: float,
) -> Line:
    segments: list[list[str]] = []
    dots = []
    previous_bucket: int | None = None
    for point in points:
        value = getattr(point, key)
        bucket = round((point.start - series.start).total_seconds() / series.bucket_s)
        if value is None:
            previous_bucket = None
            continue
        x = LEFT + PLOT_W * (bucket + 0.5) / BUCKETS
        y = _y(min(value, y_max), y_max)
        if previous_bucket is None or bucket - previous_bucket > MAX_GAP_BUCKETS:
            segments.append([])
        segments[-1].append(f"{x:.1f},{y:.1f}")
        previous_bucket = bucket
        shown = f"{format_number(value)} {unit}".strip()
        dots.append(
            Dot(
                x=x,
                y=y,
                tip=f"version {version}, {_clock(point.start)}: {shown} "
                f"({point.requests} requests, {point.devices} devices)",
            )
        )
    return Line(version=version, css=css, segments=[" ".join(s) for s in segments], dots=dots)


def _y(value: float, y_max: float) -> float:
    return TOP + PLOT_H * (1.0 - (value / y_max if y_max > 0 else 0.0))


def _x_at(series: HealthSeries, moment: datetime, span_s: float) -> float:
    offset = (moment - series.start).total_seconds() / span_s
    return LEFT + PLOT_W * min(max(offset, 0.0), 1.0)


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten at or above ``value``."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1.0, 2.0, 2.5, 5.0, 10.0) if step * power >= value)


def _clock(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _tick_label(moment: datetime, span_s: float) -> str:
    return moment.strftime("%m-%d %H:%M" if span_s > timedelta(days=1).total_seconds() else "%H:%M")
