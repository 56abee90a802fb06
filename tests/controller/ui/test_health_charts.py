"""The model page's health charts: telemetry ingested as the bridge writes it, pooled,
drawn as inline SVG per release, with alert episodes on the time axis."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.db import session_scope
from controller.monitoring.alerts import create_rule, evaluate_alerts
from controller.monitoring.series import AlertMark, HealthPoint, HealthSeries, ReleaseSeries
from controller.mqtt.telemetry import write_telemetry
from controller.tokens import Role
from controller.ui.charts import BOTTOM, HEIGHT, LEFT, PLOT_W, TOP, health_charts
from protocol import LatencySummary, ReleaseRef, TelemetryBatch, TelemetryWindow
from protocol.histograms import LATENCY_BOUNDS_MS, LATENCY_BUCKETS
from tests.controller.conftest import bearer, ctx
from tests.controller.fleet_fixtures import add_devices, add_release

START = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def _window(at: datetime, version: int, **fields: object) -> TelemetryWindow:
    counts = [0] * LATENCY_BUCKETS
    counts[20] = 100  # (3.972, 5.0] ms
    values: dict[str, object] = {
        "model": "digits",
        "release": ReleaseRef(model="digits", version=version, sha256="ab" * 32),
        "window_start": at,
        "window_s": 10.0,
        "requests": 100,
        "errors": 0,
        "nonfinite_outputs": 0,
        "top1_confidence_mean": 0.8,
        "latency": LatencySummary(
            p50_ms=4.5, p95_ms=4.9, p99_ms=5.0, bounds_ms=list(LATENCY_BOUNDS_MS), counts=counts
        ),
        **fields,
    }
    return TelemetryWindow(**values)  # type: ignore[arg-type]


def _page(client: TestClient, token: str, query: str = "") -> str:
    answer = client.get(f"/ui/models/digits{query}", headers=bearer(token))
    assert answer.status_code == 200, answer.text
    return answer.text


def test_the_model_page_draws_each_releases_health_with_the_alert_episode(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    add_release(ctx(app), "digits", 1)
    add_release(ctx(app), "digits", 2)
    old, new = add_devices(ctx(app).engine, 2, prefix="old"), add_devices(ctx(app).engine, 2)
    now = datetime.now(UTC).replace(microsecond=0)
    write_telemetry(
        ctx(app).engine,
        [
            *(
                TelemetryBatch(
                    device_id=device,
                    seq=1,
                    windows=[_window(now - timedelta(minutes=m), 1) for m in (30, 20)],
                )
                for device in old
            ),
            *(
                TelemetryBatch(
                    device_id=device,
                    seq=1,
                    windows=[_window(now - timedelta(minutes=5), 2, errors=30)],
                )
                for device in new
            ),
        ],
    )
    with session_scope(ctx(app).engine) as session:
        create_rule(
            session,
            model="digits",
            metric="error_rate",
            threshold=0.1,
            window_s=600.0,
            min_devices=1,
            min_requests=1,
            actor="test",
        )
    assert evaluate_alerts(ctx(app).engine, ctx(app).settings.artifacts_dir, now=now) == [
        "model_degraded"
    ]

    page = _page(client, tokens[Role.VIEWER], "?range=1h")
    # The health section alone: the page's lineage graph draws versions and circles too.
    html = page[page.index('<section class="health"') :]
    html = html[: html.index("</section>")]

    figures = re.findall(r'<figure class="chart" data-figure="([a-z_0-9]+)"', html)
    assert figures == ["confidence_mean", "input_drift_psi", "p95_ms", "error_rate"]
    assert html.count('data-version="1"') == len(figures)
    assert html.count('data-version="2"') == len(figures)
    # Two buckets of version 1 and one of version 2, a dot each, in every chart but drift:
    # these releases have no reference profile to read it against.
    assert html.count("<circle") == 3 * (len(figures) - 1)
    assert html.count("Not measured in this range.") == 1
    # The pooled p95 of two devices' histograms, in the dot's tooltip.
    assert "version 2" in html
    assert f"{3.972 + (5.0 - 3.972) * 0.95:.3g} ms (200 requests, 2 devices)" in html
    assert html.count('class="alert-band"') == len(figures)
    assert "alert: error_rate on version 2" in html
    assert "No telemetry in this range." not in html


def test_a_range_without_telemetry_says_so(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    add_release(ctx(app), "digits", 1)

    html = _page(client, tokens[Role.VIEWER], "?range=7d")

    assert "No telemetry in this range." in html
    assert "<svg" not in html.split('id="health"')[1]
    assert 'href="?range=7d#health" aria-current="true"' in html


def test_an_unknown_range_is_a_400_page(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    add_release(ctx(app), "digits", 1)

    answer = client.get("/ui/models/digits?range=3h", headers=bearer(tokens[Role.VIEWER]))

    assert answer.status_code == 400
    assert "range must be one of 1h, 6h, 24h, 7d" in answer.text


def _point(minute: int, **figures: float | None) -> HealthPoint:
    values: dict[str, object] = {
        "start": START + timedelta(minutes=minute),
        "devices": 1,
        "requests": 10,
        "error_rate": None,
        "nonfinite_rate": None,
        "p95_ms": None,
        "confidence_mean": None,
        "output_drift_psi": None,
        "input_drift_psi": None,
        "labeled": 0,
        "label_accuracy": None,
        **figures,
    }
    return HealthPoint(**values)  # type: ignore[arg-type]


def test_a_line_breaks_where_a_bucket_has_no_value_and_alerts_span_their_episode() -> None:
    series = HealthSeries(
        model="digits",
        version=None,
        range="1h",
        start=START,
        end=START + timedelta(hours=1),
        bucket_s=60,
        windows=4,
        truncated=False,
        covered_from=None,
        releases=[
            ReleaseSeries(
                version=3,
                points=[
                    _point(0, confidence_mean=1.0),
                    _point(1, confidence_mean=0.5),
                    _point(2),  # served, but no classifier output: no confidence
                    _point(10, confidence_mean=0.0),
                    _point(15, confidence_mean=0.0),  # 4 silent buckets: still one line
                    _point(21, confidence_mean=0.0),  # 5: broken
                ],
            )
        ],
        alerts=[
            AlertMark(
                rule_id="ar-1",
                metric="confidence_drop",
                version=3,
                started_at=START + timedelta(minutes=30),
                ended_at=None,
            )
        ],
    )

    charts = health_charts(series)

    confidence = charts.charts[0]
    [line] = confidence.lines
    bottom = HEIGHT - BOTTOM
    x = [LEFT + PLOT_W * (bucket + 0.5) / 60 for bucket in (0, 1, 10, 15, 21)]
    assert line.segments == [
        f"{x[0]:.1f},{TOP:.1f} {x[1]:.1f},{(TOP + bottom) / 2:.1f}",
        f"{x[2]:.1f},{bottom:.1f} {x[3]:.1f},{bottom:.1f}",
        f"{x[4]:.1f},{bottom:.1f}",
    ]
    [band] = charts.bands
    assert (band.x, band.x + band.width) == pytest.approx((LEFT + PLOT_W / 2, LEFT + PLOT_W))
    assert "now (open)" in band.tip
    assert [c.key for c in charts.charts if not c.measured] == [
        "input_drift_psi",
        "p95_ms",
        "error_rate",
    ]
