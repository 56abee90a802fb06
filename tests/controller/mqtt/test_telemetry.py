"""Telemetry windows in SQLite and PostgreSQL: stored once, merged, pruned, aggregated."""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, func, insert, select

from controller.db import make_engine
from controller.devices.tables import DeviceRecord, telemetry_table
from controller.migrate import upgrade_database
from controller.mqtt.telemetry import downsample_telemetry, prune_telemetry, to_utc, write_telemetry
from controller.rollouts.health import fleet_health
from protocol import (
    LATENCY_BOUNDS_MS,
    LATENCY_BUCKETS,
    Histogram,
    LatencySummary,
    ReferenceProfile,
    ReleaseRef,
    TelemetryBatch,
    TelemetryWindow,
    histogram_quantile,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SHA = "ab" * 32


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


def add_devices(engine: Engine, *device_ids: str) -> None:
    table = DeviceRecord.__table__  # type: ignore[attr-defined]
    with engine.begin() as connection:
        connection.execute(
            insert(table),
            [
                {
                    "id": device_id,
                    "labels": {},
                    "mqtt_password_hash": "-",
                    "enrolled_at": T0,
                    "online": True,
                    "next_deployment_sequence": 1,
                    "next_command_sequence": 1,
                }
                for device_id in device_ids
            ],
        )


def window(start: datetime, **fields: Any) -> TelemetryWindow:
    values: dict[str, Any] = {
        "model": "digits",
        "release": ReleaseRef(model="digits", version=2, sha256=SHA),
        "window_start": start,
        "window_s": 10.0,
        "requests": 100,
        "errors": 1,
        "nonfinite_outputs": 0,
        "latency": LatencySummary(p50_ms=1.0, p95_ms=2.0, p99_ms=3.0),
        "top1_confidence_mean": 0.9,
        "drift_psi": {"x": 0.05, "y": 0.2},
        "output_drift_psi": 0.2,
    }
    values.update(fields)
    return TelemetryWindow(**values)


def batch(device_id: str, *windows: TelemetryWindow, seq: int = 1) -> TelemetryBatch:
    return TelemetryBatch(device_id=device_id, seq=seq, windows=list(windows))


def stored(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(telemetry_table).order_by(
                telemetry_table.c.device_id, telemetry_table.c.window_start
            )
        ).mappings()
        return [dict(row) for row in rows]


def test_a_batch_delivered_twice_is_stored_once(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    sent = batch("dev-1", window(T0), window(T0 + timedelta(seconds=10)))

    assert write_telemetry(engine, [sent]) == 2
    assert write_telemetry(engine, [sent, sent]) == 0
    assert len(stored(engine)) == 2


def test_a_window_row_holds_what_the_device_measured(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    write_telemetry(engine, [batch("dev-1", window(T0, errors=3, nonfinite_outputs=2))])

    (row,) = stored(engine)
    assert (row["device_id"], row["model_name"], row["version"]) == ("dev-1", "digits", 2)
    assert (row["requests"], row["errors"], row["nonfinite"], row["merged"]) == (100, 3, 2, 1)
    assert (row["p50_ms"], row["p95_ms"], row["p99_ms"]) == (1.0, 2.0, 3.0)
    assert (row["confidence_mean"], row["max_drift_psi"]) == (0.9, 0.2)
    assert to_utc(row["window_start"]) == T0


def test_input_drift_alone_is_never_stored_as_the_gate_drift(engine: Engine) -> None:
    # A window too small to judge, or whose only drift is the inputs': no gate figure.
    add_devices(engine, "dev-1")
    write_telemetry(
        engine, [batch("dev-1", window(T0, drift_psi={"x": 6.2}, output_drift_psi=None))]
    )

    (row,) = stored(engine)
    assert row["max_drift_psi"] is None


def test_windows_of_unknown_devices_are_skipped(engine: Engine) -> None:
    add_devices(engine, "dev-1")

    written = write_telemetry(engine, [batch("dev-1", window(T0)), batch("ghost", window(T0))])

    assert written == 1
    assert [row["device_id"] for row in stored(engine)] == ["dev-1"]


def test_the_same_moment_in_another_offset_is_the_same_window(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    berlin = T0.astimezone(timezone(timedelta(hours=1)))

    write_telemetry(engine, [batch("dev-1", window(T0))])

    assert write_telemetry(engine, [batch("dev-1", window(berlin))]) == 0


def test_fleet_health_weights_p95_and_confidence_by_requests(engine: Engine) -> None:
    add_devices(engine, "dev-1", "dev-2")
    write_telemetry(
        engine,
        [
            batch("dev-1", window(T0, requests=100, errors=2, top1_confidence_mean=0.9)),
            batch(
                "dev-2",
                window(
                    T0,
                    requests=300,
                    errors=0,
                    nonfinite_outputs=4,
                    latency=LatencySummary(p50_ms=1, p95_ms=6.0, p99_ms=9),
                    top1_confidence_mean=0.5,
                    drift_psi={"x": 0.7},
                    output_drift_psi=0.7,
                ),
            ),
        ],
    )

    health = fleet_health(
        engine, device_ids=["dev-1", "dev-2"], model="digits", version=2, since=T0
    )

    assert (health.devices, health.requests) == (2, 400)
    assert health.error_rate == pytest.approx(2 / 400)
    assert health.nonfinite_rate == pytest.approx(4 / 400)
    assert health.p95_ms == pytest.approx((2.0 * 100 + 6.0 * 300) / 400)
    assert health.confidence_mean == pytest.approx((0.9 * 100 + 0.5 * 300) / 400)
    assert health.max_drift_psi == pytest.approx(0.7)


def histogram(*latencies_ms: float) -> LatencySummary:
    """A window's latency summary as an agent sends it, from its requests' latencies."""
    counts = [0] * LATENCY_BUCKETS
    for latency in latencies_ms:
        counts[bisect_left(LATENCY_BOUNDS_MS, latency)] += 1
    quantiles = [
        histogram_quantile(counts, q, max_value=max(latencies_ms)) for q in (0.5, 0.95, 0.99)
    ]
    p50, p95, p99 = (value or 0.0 for value in quantiles)
    return LatencySummary(
        p50_ms=p50, p95_ms=p95, p99_ms=p99, bounds_ms=list(LATENCY_BOUNDS_MS), counts=counts
    )


def test_fleet_health_reads_p95_from_every_request_not_from_window_averages(
    engine: Engine,
) -> None:
    """One busy device at 1 ms and five quiet windows at 100 ms: the group's p95 is 1 ms
    (100 of its 105 requests took 1 ms), not the request-weighted mean of window p95s
    (about 5.7 ms), which grows with how many quiet windows there are."""
    add_devices(engine, "busy", "quiet")
    quiet = [
        window(T0 + timedelta(seconds=10 * i), requests=1, errors=0, latency=histogram(100.0))
        for i in range(5)
    ]
    write_telemetry(
        engine,
        [
            batch("busy", window(T0, requests=100, errors=0, latency=histogram(*[1.0] * 100))),
            batch("quiet", *quiet),
        ],
    )

    health = fleet_health(engine, device_ids=["busy", "quiet"], model="digits", version=2, since=T0)

    assert health.requests == 105
    assert health.p95_ms is not None
    assert health.p95_ms <= 1.0 * 1.26  # within the 1 ms bucket (buckets are 26 % wide)


def test_downsampling_adds_up_the_latency_histograms(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    start = T0 - timedelta(minutes=30)
    windows = [
        window(start + timedelta(seconds=10 * i), requests=2, latency=histogram(1.0, 50.0))
        for i in range(3)
    ]
    write_telemetry(engine, [batch("dev-1", *windows)])
    before = fleet_health(engine, device_ids=["dev-1"], model="digits", version=2, since=start)

    downsample_telemetry(engine, older_than=T0, bucket_s=300)

    (row,) = stored(engine)
    assert row["merged"] == 3
    assert sum(json.loads(row["latency_counts"])) == 6
    after = fleet_health(engine, device_ids=["dev-1"], model="digits", version=2, since=start)
    assert after.p95_ms == pytest.approx(before.p95_ms)


def test_fleet_health_without_requests_has_no_rates(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    write_telemetry(engine, [batch("dev-1", window(T0, requests=0, errors=0))])

    health = fleet_health(engine, device_ids=["dev-1"], model="digits", version=2, since=T0)

    assert (health.devices, health.requests) == (1, 0)
    assert (health.error_rate, health.nonfinite_rate, health.p95_ms) == (None, None, None)
    assert health.confidence_mean is None


def test_fleet_health_reads_only_the_version_and_time_asked(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    old = ReleaseRef(model="digits", version=1, sha256=SHA)
    write_telemetry(
        engine,
        [
            batch(
                "dev-1",
                window(T0 - timedelta(minutes=5), errors=50),
                window(T0, release=old, errors=40),
                window(T0 + timedelta(seconds=10), errors=5),
                window(T0 + timedelta(seconds=20), model="other", errors=60),
            )
        ],
    )

    health = fleet_health(engine, device_ids=["dev-1"], model="digits", version=2, since=T0)
    any_version = fleet_health(engine, device_ids=["dev-1"], model="digits", version=None, since=T0)

    assert (health.requests, health.error_rate) == (100, 0.05)
    assert (any_version.requests, any_version.error_rate) == (200, 0.45 / 2)


def test_fleet_health_adds_up_thousands_of_devices(engine: Engine) -> None:
    device_ids = [f"dev-{index:05d}" for index in range(2500)]
    add_devices(engine, *device_ids)
    write_telemetry(engine, [batch(device_id, window(T0)) for device_id in device_ids])

    health = fleet_health(
        engine, device_ids=[*device_ids, "ghost"], model="digits", version=2, since=T0
    )

    assert (health.devices, health.requests) == (2500, 250_000)
    assert health.error_rate == pytest.approx(0.01)


def test_downsampling_merges_old_windows_and_keeps_the_sums(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    start = T0 - timedelta(minutes=30)
    old = [
        window(start + timedelta(seconds=10 * i), requests=10 * (i + 1), errors=i) for i in range(3)
    ]
    recent = window(T0)
    write_telemetry(engine, [batch("dev-1", *old, recent)])
    before = fleet_health(
        engine, device_ids=["dev-1"], model="digits", version=2, since=start - timedelta(hours=1)
    )

    removed = downsample_telemetry(engine, older_than=T0, bucket_s=300)

    rows = stored(engine)
    assert removed == 2
    assert [(row["merged"], row["requests"], row["errors"]) for row in rows] == [
        (3, 60, 3),
        (1, 100, 1),
    ]
    assert rows[0]["window_s"] == 30.0
    after = fleet_health(
        engine, device_ids=["dev-1"], model="digits", version=2, since=start - timedelta(hours=1)
    )
    assert asdict(after) == pytest.approx(asdict(before))


def test_downsampling_keeps_two_versions_in_one_bucket_apart(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    start = T0 - timedelta(hours=2)
    v1 = ReleaseRef(model="digits", version=1, sha256=SHA)
    write_telemetry(
        engine,
        [
            batch(
                "dev-1",
                *(window(start + timedelta(seconds=10 * i), release=v1) for i in range(3)),
                *(window(start + timedelta(seconds=30 + 10 * i)) for i in range(3)),
            )
        ],
    )

    downsample_telemetry(engine, older_than=T0, bucket_s=300, lookback_s=86400)

    assert sorted((row["version"], row["merged"]) for row in stored(engine)) == [(1, 3), (2, 3)]


def test_downsampling_again_changes_nothing(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    start = T0 - timedelta(minutes=30)
    write_telemetry(
        engine, [batch("dev-1", *(window(start + timedelta(seconds=10 * i)) for i in range(60)))]
    )
    downsample_telemetry(engine, older_than=T0, bucket_s=300)
    first = stored(engine)

    assert downsample_telemetry(engine, older_than=T0, bucket_s=300) == 0
    assert stored(engine) == first
    assert [row["merged"] for row in first] == [30, 30]


def test_late_windows_join_the_bucket_merged_before(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    start = T0 - timedelta(minutes=30)
    write_telemetry(engine, [batch("dev-1", window(start), window(start + timedelta(seconds=10)))])
    downsample_telemetry(engine, older_than=T0, bucket_s=300)

    write_telemetry(engine, [batch("dev-1", window(start + timedelta(seconds=20)), seq=2)])
    downsample_telemetry(engine, older_than=T0, bucket_s=300)

    assert [(row["merged"], row["requests"]) for row in stored(engine)] == [(3, 300)]


def test_pruning_deletes_windows_before_the_cutoff(engine: Engine) -> None:
    add_devices(engine, "dev-1")
    write_telemetry(
        engine, [batch("dev-1", window(T0 - timedelta(days=40)), window(T0 - timedelta(days=1)))]
    )

    assert prune_telemetry(engine, older_than=T0 - timedelta(days=30)) == 1
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(telemetry_table)) == 1


REFERENCE = ReferenceProfile(
    source="validation",
    inputs={"x": Histogram(bin_edges=[float(i) for i in range(11)], fractions=[0.1] * 10)},
    outputs={"y": Histogram(bin_edges=[float(i) for i in range(11)], fractions=[0.1] * 10)},
)


def _small_windows(
    engine: Engine, rng: np.random.Generator, *, devices: int, fractions: list[float]
) -> list[str]:
    """Each device sends one window of 4 requests, one output value each, drawn from
    ``fractions`` over the reference's 10 bins; its input drifts wildly, always."""
    device_ids = [f"dev-{index:04d}" for index in range(devices)]
    add_devices(engine, *device_ids)
    batches = []
    for device_id in device_ids:
        counts = rng.multinomial(4, fractions).tolist()
        batches.append(
            batch(
                device_id,
                window(
                    T0,
                    requests=4,
                    errors=0,
                    output_drift_psi=None,  # a window of 4 requests judges nothing itself
                    drift_counts={"y": counts, "x": [4] + [0] * 9},
                ),
            )
        )
    write_telemetry(engine, batches)
    return device_ids


def test_fleet_drift_is_one_psi_over_every_windows_values_not_the_worst_window(
    engine: Engine,
) -> None:
    """500 devices on exactly the reference distribution, 4 values each: any one window's
    PSI would be far above 0.25 (about 9/N on N values); pooled, 2,000 values read low."""
    rng = np.random.default_rng(17)
    device_ids = _small_windows(engine, rng, devices=500, fractions=[0.1] * 10)

    health = fleet_health(
        engine, device_ids=device_ids, model="digits", version=2, since=T0, reference=REFERENCE
    )

    assert health.drift_values == 2000
    assert health.max_drift_psi is not None
    assert health.max_drift_psi < 0.05  # the input "x" drifts wildly: never read here
    assert health.max_input_drift_psi is None
    # Asked for (alerts do), the input's drift is pooled the same way.
    with_inputs = fleet_health(
        engine,
        device_ids=device_ids,
        model="digits",
        version=2,
        since=T0,
        reference=REFERENCE,
        input_drift=True,
    )
    assert with_inputs.max_input_drift_psi is not None
    assert with_inputs.max_input_drift_psi > 1.0
    assert with_inputs.max_drift_psi == health.max_drift_psi


def test_fleet_drift_sees_a_shift_the_reference_did_not_have(engine: Engine) -> None:
    rng = np.random.default_rng(18)
    shifted = [0.02] * 5 + [0.18] * 5
    device_ids = _small_windows(engine, rng, devices=500, fractions=shifted)

    health = fleet_health(
        engine, device_ids=device_ids, model="digits", version=2, since=T0, reference=REFERENCE
    )

    assert health.max_drift_psi is not None
    assert health.max_drift_psi > 0.25


def test_fleet_drift_needs_enough_pooled_values(engine: Engine) -> None:
    """Below MIN_DRIFT_REQUESTS requests pooled there is no figure, so no gate reads noise."""
    rng = np.random.default_rng(19)
    device_ids = _small_windows(engine, rng, devices=40, fractions=[0.1] * 10)

    health = fleet_health(
        engine, device_ids=device_ids, model="digits", version=2, since=T0, reference=REFERENCE
    )

    assert health.requests == 160
    assert (health.max_drift_psi, health.drift_values) == (None, None)


def test_without_a_validation_reference_drift_is_what_windows_judged_themselves(
    engine: Engine,
) -> None:
    add_devices(engine, "dev-1")
    write_telemetry(engine, [batch("dev-1", window(T0, drift_counts={"y": [400] + [0] * 9}))])
    generated = REFERENCE.model_copy(update={"source": "generated"})

    for reference in (None, generated):
        health = fleet_health(
            engine, device_ids=["dev-1"], model="digits", version=2, since=T0, reference=reference
        )
        assert (health.max_drift_psi, health.drift_values) == (0.2, None)


def test_a_malformed_stored_histogram_is_left_out_not_an_error(engine: Engine) -> None:
    """Rows the bridge never writes (a hand edit, another tool): the rest still pools."""
    rng = np.random.default_rng(20)
    device_ids = _small_windows(engine, rng, devices=100, fractions=[0.1] * 10)
    with engine.begin() as connection:
        connection.execute(
            telemetry_table.update()
            .where(telemetry_table.c.device_id == device_ids[0])
            .values(drift_counts="{not json", latency_counts="[1,2,3]")
        )

    health = fleet_health(
        engine, device_ids=device_ids, model="digits", version=2, since=T0, reference=REFERENCE
    )

    assert health.drift_values == 99 * 4
    assert health.requests == 400


def test_fleet_health_pools_the_labels_applications_sent_back(engine: Engine) -> None:
    add_devices(engine, "dev-1", "dev-2")
    write_telemetry(
        engine,
        [
            batch("dev-1", window(T0, labeled=10, labeled_correct=9)),
            batch("dev-2", window(T0, labeled=30, labeled_correct=21)),
        ],
    )

    health = fleet_health(
        engine, device_ids=["dev-1", "dev-2"], model="digits", version=2, since=T0
    )

    assert health.labeled == 40
    assert health.label_accuracy == pytest.approx(30 / 40)
    alone = fleet_health(engine, device_ids=["dev-1"], model="digits", version=2, since=T0)
    assert alone.label_accuracy == pytest.approx(0.9)
