"""Each release's health over time: windows ingested as the bridge writes them, pooled per
bucket like the gates pool a group, on SQLite and PostgreSQL, and served by the API."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.db import session_scope
from controller.devices.tables import telemetry_table
from controller.monitoring.alerts import evaluate_alerts
from controller.monitoring.series import BUCKETS, HealthSeries, model_health_series
from controller.mqtt.telemetry import write_telemetry
from controller.registry.artifact_store import ArtifactStore
from controller.registry.tables import ReleaseRecord
from controller.tokens import Role
from protocol import (
    Histogram,
    LatencySummary,
    ReferenceProfile,
    ReleaseRef,
    TelemetryBatch,
    TelemetryWindow,
)
from protocol.histograms import LATENCY_BOUNDS_MS, LATENCY_BUCKETS
from tensors.profile import PSI_EPSILON
from tests.check_bundles import bundle_bytes, ref_of
from tests.controller.conftest import bearer, ctx
from tests.controller.fleet_fixtures import add_devices, add_release
from tests.factories import make_release

# A whole minute: the 1h range ends exactly here, its buckets are 60 s from 09:00.
NOW = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
RANGE_START = NOW - timedelta(hours=1)
TEN_BINS = [float(edge) for edge in range(11)]
REFERENCE = ReferenceProfile(
    source="validation",
    inputs={"x": Histogram(bin_edges=TEN_BINS, fractions=[0.1] * 10)},
    outputs={"y": Histogram(bin_edges=TEN_BINS, fractions=[0.1] * 10)},
)


def latency(**counts_at: int) -> LatencySummary:
    """A latency summary whose histogram has ``count`` requests in bucket ``b<index>``."""
    counts = [0] * LATENCY_BUCKETS
    for bucket, count in counts_at.items():
        counts[int(bucket.removeprefix("b"))] = count
    return LatencySummary(
        p50_ms=1.0, p95_ms=1.0, p99_ms=1.0, bounds_ms=list(LATENCY_BOUNDS_MS), counts=counts
    )


def send(app: FastAPI, device_id: str, at: datetime, *, version: int = 2, **fields: Any) -> None:
    """One telemetry window of ``digits:version`` from ``device_id``, as ingest writes it."""
    window: dict[str, Any] = {
        "model": "digits",
        "release": ReleaseRef(model="digits", version=version, sha256="ab" * 32),
        "window_start": at,
        "window_s": 10.0,
        "requests": 100,
        "errors": 0,
        "nonfinite_outputs": 0,
    }
    window.update(fields)
    batch = TelemetryBatch(device_id=device_id, seq=1, windows=[TelemetryWindow(**window)])
    assert write_telemetry(ctx(app).engine, [batch]) == 1


def series(app: FastAPI, **options: Any) -> HealthSeries:
    reference = options.pop("reference", None)
    return model_health_series(
        ctx(app).engine,
        model="digits",
        range_name=options.pop("range_name", "1h"),
        now=options.pop("now", NOW),
        reference_of=lambda _version: reference,
        **options,
    )


def test_two_windows_are_one_p95_over_both_histograms_not_a_mean_of_their_p95s(
    app: FastAPI,
) -> None:
    fast, slow = add_devices(ctx(app).engine, 2)
    at = RANGE_START + timedelta(minutes=30)
    send(app, fast, at, latency=latency(b10=100))  # (0.3972, 0.5] ms
    send(app, slow, at + timedelta(seconds=10), latency=latency(b20=100))  # (3.972, 5.0] ms

    [release] = series(app).releases
    [point] = release.points

    # Rank 0.95 * 200 = 190 is the 90th of the 100 requests in (3.972, 5.0].
    assert point.p95_ms == pytest.approx(3.972 + (5.0 - 3.972) * 90 / 100)
    assert (point.devices, point.requests, point.start) == (2, 200, at)


def test_rates_confidence_and_accuracy_are_over_every_request(app: FastAPI) -> None:
    first, second = add_devices(ctx(app).engine, 2)
    at = RANGE_START + timedelta(minutes=10, seconds=5)
    send(app, first, at, errors=2, top1_confidence_mean=0.9, labeled=10, labeled_correct=9)
    send(
        app,
        second,
        at,
        requests=300,
        errors=10,
        nonfinite_outputs=3,
        top1_confidence_mean=0.5,
        labeled=30,
        labeled_correct=21,
    )

    [point] = series(app).releases[0].points

    assert point.requests == 400
    assert point.error_rate == pytest.approx(12 / 400)
    assert point.nonfinite_rate == pytest.approx(3 / 400)
    assert point.confidence_mean == pytest.approx((0.9 * 100 + 0.5 * 300) / 400)
    assert (point.labeled, point.label_accuracy) == (40, pytest.approx(30 / 40))
    assert point.start == RANGE_START + timedelta(minutes=10)


def test_windows_fall_in_the_bucket_of_their_start_per_release(app: FastAPI) -> None:
    [device] = add_devices(ctx(app).engine, 1)
    send(app, device, RANGE_START - timedelta(seconds=1), errors=100)  # before the range
    send(app, device, RANGE_START, errors=1)  # on the first bucket's edge
    send(app, device, NOW - timedelta(seconds=1), errors=2)  # the last bucket
    send(app, device, NOW, errors=100)  # after the range
    send(app, device, RANGE_START + timedelta(seconds=59), version=3, errors=3)

    answer = series(app)

    assert (answer.start, answer.end, answer.bucket_s) == (RANGE_START, NOW, 60)
    assert [r.version for r in answer.releases] == [2, 3]
    old, new = answer.releases
    assert [(p.start, p.error_rate) for p in old.points] == [
        (RANGE_START, 0.01),
        (RANGE_START + timedelta(seconds=60 * (BUCKETS - 1)), 0.02),
    ]
    assert [(p.start, p.error_rate) for p in new.points] == [(RANGE_START, 0.03)]
    assert answer.windows == 3
    only_new = series(app, version=3)
    assert [r.version for r in only_new.releases] == [3]


def test_a_range_ends_on_the_next_whole_bucket(app: FastAPI) -> None:
    answer = series(app, now=NOW + timedelta(seconds=1), range_name="24h")

    assert answer.bucket_s == 24 * 60
    # 10:00 is a whole number of 24-minute buckets since the epoch; 10:00:01 is in the next.
    assert answer.end == NOW + timedelta(minutes=24)
    assert answer.end - answer.start == timedelta(hours=24)
    assert (answer.releases, answer.windows, answer.truncated) == ([], 0, False)


def test_drift_is_one_psi_over_the_buckets_pooled_counts(app: FastAPI) -> None:
    """Five windows of 50 values, each in two bins only (alone each reads PSI > 1), add
    up to the reference's uniform histogram: the bucket's output drift is 0. The input
    put everything in one bin: its PSI is the formula's on (1, 0, ..., 0)."""
    devices = add_devices(ctx(app).engine, 5)
    at = RANGE_START + timedelta(minutes=20)
    for index, device in enumerate(devices):
        output = [0] * 10
        output[2 * index] = output[2 * index + 1] = 25
        send(app, device, at, requests=50, drift_counts={"y": output, "x": [50] + [0] * 9})

    [point] = series(app, reference=REFERENCE).releases[0].points

    assert point.output_drift_psi == pytest.approx(0.0, abs=1e-12)
    one_bin = (1.0 - 0.1) * math.log(1.0 / 0.1) + 9 * (PSI_EPSILON - 0.1) * math.log(
        PSI_EPSILON / 0.1
    )
    assert point.input_drift_psi == pytest.approx(one_bin)


def test_drift_needs_enough_values_in_the_bucket(app: FastAPI) -> None:
    [device] = add_devices(ctx(app).engine, 1)
    send(app, device, RANGE_START, requests=100, drift_counts={"x": [100] + [0] * 9})

    [point] = series(app, reference=REFERENCE).releases[0].points

    assert (point.input_drift_psi, point.output_drift_psi) == (None, None)


def test_without_a_reference_drift_is_the_worst_windows_own(app: FastAPI) -> None:
    first, second = add_devices(ctx(app).engine, 2)
    send(app, first, RANGE_START, output_drift_psi=0.1)
    send(app, second, RANGE_START, output_drift_psi=0.3)

    [point] = series(app, reference=None).releases[0].points

    assert (point.output_drift_psi, point.input_drift_psi) == (0.3, None)


def test_a_malformed_stored_histogram_is_left_out_of_its_bucket_not_an_error(
    app: FastAPI,
) -> None:
    """Rows the bridge never writes (a hand edit, another tool): the rest still pools."""
    first, second, third = add_devices(ctx(app).engine, 3)
    at = RANGE_START + timedelta(minutes=40)
    for device in (first, second, third):
        counts = [0] * 10
        counts[0] = 100
        send(app, device, at, latency=latency(b20=100), drift_counts={"x": counts})
    with ctx(app).engine.begin() as connection:
        connection.execute(
            telemetry_table.update()
            .where(telemetry_table.c.device_id == first)
            .values(latency_counts="[1,2,3]", drift_counts="{not json")
        )

    [point] = series(app, reference=REFERENCE).releases[0].points

    assert point.requests == 300
    assert point.p95_ms == pytest.approx(3.972 + (5.0 - 3.972) * 0.95)
    assert point.input_drift_psi is not None  # 200 values of the two good windows


def test_at_most_max_windows_are_read_the_newest(app: FastAPI) -> None:
    [device] = add_devices(ctx(app).engine, 1)
    times = [RANGE_START + timedelta(minutes=minute) for minute in (5, 6, 7)]
    for at in times:
        send(app, device, at)

    answer = series(app, max_windows=2)

    assert (answer.windows, answer.truncated, answer.covered_from) == (2, True, times[1])
    assert [p.start for p in answer.releases[0].points] == times[1:]


def _release_with_reference(app: FastAPI, version: int, reference: ReferenceProfile) -> None:
    """``digits:version`` signed with a check bundle holding ``reference``, in the store."""
    data = bundle_bytes(reference_profile=reference)
    spooled = ctx(app).settings.work_dir / "bundle.npz"
    spooled.parent.mkdir(parents=True, exist_ok=True)
    spooled.write_bytes(data)
    ArtifactStore(ctx(app).settings.artifacts_dir).put(spooled)
    record = add_release(ctx(app), "digits", version)
    release = make_release(model="digits", version=version, check_bundle=ref_of(data))
    with session_scope(ctx(app).engine) as session:
        row = session.get(ReleaseRecord, record.id)
        assert row is not None
        row.envelope = release.sign([ctx(app).signer.release_key]).to_bytes().decode()
        session.add(row)


def test_the_api_reads_drift_against_the_releases_reference_in_its_check_bundle(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    _release_with_reference(app, 2, REFERENCE)
    devices = add_devices(ctx(app).engine, 3)
    now = datetime.now(UTC).replace(microsecond=0)
    for device in devices:
        send(app, device, now - timedelta(minutes=1), drift_counts={"x": [100] + [0] * 9})

    answer = _get(client, "/api/v1/models/digits/health?range=1h", tokens[Role.VIEWER])

    assert answer.status_code == 200, answer.text
    [point] = answer.json()["releases"][0]["points"]
    one_bin = (1.0 - 0.1) * math.log(1.0 / 0.1) + 9 * (PSI_EPSILON - 0.1) * math.log(
        PSI_EPSILON / 0.1
    )
    assert point["input_drift_psi"] == pytest.approx(one_bin)


def _get(client: TestClient, path: str, token: str | None) -> Any:
    return client.get(path, headers=bearer(token) if token else {})


def test_the_api_serves_a_viewer_the_series_and_the_alert_episodes(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    add_release(ctx(app), "digits", 2)
    devices = add_devices(ctx(app).engine, 3)
    now = datetime.now(UTC).replace(microsecond=0)
    for device in devices:
        send(app, device, now - timedelta(minutes=2), errors=20, latency=latency(b20=100))
    rule = client.post(
        "/api/v1/alert-rules",
        json={"model": "digits", "metric": "error_rate", "threshold": 0.05},
        headers=bearer(tokens[Role.OPERATOR]),
    ).json()
    assert evaluate_alerts(ctx(app).engine, ctx(app).settings.artifacts_dir, now=now) == [
        "model_degraded"
    ]

    answer = _get(client, "/api/v1/models/digits/health?range=1h", tokens[Role.VIEWER])

    assert answer.status_code == 200, answer.text
    body = answer.json()
    [release] = body["releases"]
    [point] = release["points"]
    assert (release["version"], point["requests"], point["error_rate"]) == (2, 300, 0.2)
    assert point["p95_ms"] == pytest.approx(3.972 + (5.0 - 3.972) * 0.95)
    [alert] = body["alerts"]
    assert (alert["rule_id"], alert["metric"], alert["version"]) == (rule["id"], "error_rate", 2)
    assert alert["ended_at"] is None
    other = _get(client, "/api/v1/models/digits/health?range=1h&version=3", tokens[Role.VIEWER])
    assert other.json()["releases"] == []
    assert other.json()["alerts"] == []


@pytest.mark.parametrize(
    ("path", "role", "status"),
    [
        ("/api/v1/models/digits/health?range=2h", Role.VIEWER, 400),
        ("/api/v1/models/digits/health?range=", Role.VIEWER, 400),
        ("/api/v1/models/nothing/health", Role.VIEWER, 404),
        ("/api/v1/models/digits/health?version=0", Role.VIEWER, 422),
        ("/api/v1/models/digits/health", None, 401),
        ("/api/v1/models/digits/health", Role.DEVICE, 403),
        ("/api/v1/models/digits/health", Role.VIEWER, 200),
    ],
)
def test_the_api_refuses_what_it_cannot_answer(
    app: FastAPI,
    client: TestClient,
    tokens: dict[Role, str],
    path: str,
    role: Role | None,
    status: int,
) -> None:
    add_release(ctx(app), "digits", 1)

    answer = _get(client, path, tokens[role] if role else None)

    assert answer.status_code == status, answer.text
    if status == 400:
        assert "range must be one of 1h, 6h, 24h, 7d" in answer.json()["detail"]
