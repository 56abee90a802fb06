"""What reading a group's health costs once latency and drift are pooled (issue 17).

The rollout planner reads a wave's health at every plan tick, and each alert rule and
/metrics scrape reads a release's. Pooling adds two queries that fetch every window's
latency histogram and drift counts and add them up. Printed for 1,000 devices x 60
windows (10 minutes of 10 s windows) on SQLite, next to the aggregate query alone (what
the health read cost before pooling), measured in the same run.

    .venv/bin/python bench/fleet_health.py [--devices 1000] [--windows 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from sqlalchemy import func, insert, select

from controller.db import make_engine
from controller.devices.tables import DeviceRecord, telemetry_table
from controller.migrate import upgrade_database
from controller.rollouts.health import fleet_health
from protocol import LATENCY_BUCKETS, Histogram, ReferenceProfile

T0 = datetime(2026, 12, 1, tzinfo=UTC)
REPEATS = 5
REFERENCE = ReferenceProfile(
    source="validation",
    inputs={"x": Histogram(bin_edges=[float(i) for i in range(11)], fractions=[0.1] * 10)},
    outputs={"y": Histogram(bin_edges=[float(i) for i in range(11)], fractions=[0.1] * 10)},
)


def fill(engine: object, devices: int, windows: int) -> list[str]:
    rng = np.random.default_rng(3)
    ids = [f"dev-{i:05d}" for i in range(devices)]
    with engine.begin() as connection:  # type: ignore[attr-defined]
        connection.execute(
            insert(DeviceRecord.__table__),  # type: ignore[attr-defined]
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
                for device_id in ids
            ],
        )
        rows = []
        for device_id in ids:
            for k in range(windows):
                latency = [0] * LATENCY_BUCKETS
                latency[20], latency[25] = 18, 2
                drift = {
                    "x": rng.multinomial(80, [0.1] * 10).tolist(),
                    "y": rng.multinomial(20, [0.1] * 10).tolist(),
                }
                rows.append(
                    {
                        "device_id": device_id,
                        "model_name": "m",
                        "version": 2,
                        "window_start": T0 + timedelta(seconds=10 * k),
                        "window_s": 10.0,
                        "requests": 20,
                        "errors": 0,
                        "nonfinite": 0,
                        "p50_ms": 1.0,
                        "p95_ms": 2.0,
                        "p99_ms": 3.0,
                        "confidence_mean": 0.9,
                        "max_drift_psi": None,
                        "latency_counts": json.dumps(latency, separators=(",", ":")),
                        "drift_counts": json.dumps(drift, separators=(",", ":")),
                        "merged": 1,
                    }
                )
        connection.execute(insert(telemetry_table), rows)
    return ids


def timed(call: object) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        call()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        engine = make_engine(f"sqlite:///{directory}/bench.db")
        upgrade_database(engine)
        ids = fill(engine, args.devices, args.windows)
        t = telemetry_table.c

        def aggregate_only() -> None:
            with engine.connect() as connection:
                for start in range(0, len(ids), 900):
                    connection.execute(
                        select(func.count(func.distinct(t.device_id)), func.sum(t.requests)).where(
                            t.device_id.in_(ids[start : start + 900]), t.model_name == "m"
                        )
                    ).one()

        def pooled(device_ids: list[str] | None) -> None:
            health = fleet_health(
                engine,
                device_ids=device_ids,
                model="m",
                version=2,
                since=T0,
                reference=REFERENCE,
                input_drift=True,
            )
            assert health.drift_values is not None

        baseline = timed(aggregate_only)
        by_ids = timed(lambda: pooled(ids))
        whole = timed(lambda: pooled(None))
        engine.dispose()
    windows = args.devices * args.windows
    print(f"{windows:,} windows ({args.devices:,} devices x {args.windows}), SQLite")
    print(f"median of {REPEATS} reads each")
    rows = [
        ("aggregate query alone (baseline)", baseline),
        ("pooled health, a wave's device ids", by_ids),
        ("pooled health, the whole fleet (alerts)", whole),
    ]
    for label, seconds in rows:
        print(f"  {label:<42} {seconds * 1000:8.1f} ms  ({seconds / baseline:.1f}x)")


if __name__ == "__main__":
    main()
