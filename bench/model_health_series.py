"""What the model page's health charts cost to read (``monitoring.series``, issue 17).

The model page and ``GET /api/v1/models/{name}/health`` read one grouped statement over
the range: sums per release and bucket, and every window's latency histogram and drift
counts joined by the database, added up in Python per bucket. The cost grows with the
windows read, which ``MAX_WINDOWS`` caps. Printed for 1,000 devices x 100 windows
(100,000: the cap, about 17 minutes of 10 s windows) on SQLite, all of them and the newest
half, next to the 5-minute pooled health read that alerts and ``/metrics`` do
(``fleet_health``), measured in the same run.

    .venv/bin/python bench/model_health_series.py [--devices 1000] [--windows 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleet_health import REFERENCE, T0, fill
from controller.db import make_engine
from controller.migrate import upgrade_database
from controller.monitoring.series import model_health_series
from controller.rollouts.health import fleet_health

REPEATS = 3


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
    parser.add_argument("--windows", type=int, default=100)
    args = parser.parse_args()
    now = T0 + timedelta(seconds=10 * args.windows)
    windows = args.devices * args.windows
    with tempfile.TemporaryDirectory() as directory:
        engine = make_engine(f"sqlite:///{directory}/bench.db")
        upgrade_database(engine)
        fill(engine, args.devices, args.windows)

        def series(max_windows: int) -> None:
            answer = model_health_series(
                engine,
                model="m",
                range_name="1h",
                now=now,
                reference_of=lambda _version: REFERENCE,
                max_windows=max_windows,
            )
            assert answer.windows == min(windows, max_windows)
            assert all(p.input_drift_psi is not None for p in answer.releases[0].points)

        def five_minutes() -> None:
            fleet_health(
                engine,
                device_ids=None,
                model="m",
                version=2,
                since=now - timedelta(minutes=5),
                reference=REFERENCE,
                input_drift=True,
            )

        rows = [
            ("pooled health, last 5 minutes (alerts)", timed(five_minutes)),
            ("series, 1h range, every window", timed(lambda: series(windows))),
            ("series, 1h range, newest half", timed(lambda: series(windows // 2))),
        ]
        engine.dispose()
    print(f"{windows:,} windows ({args.devices:,} devices x {args.windows}), SQLite")
    print(f"median of {REPEATS} reads each")
    for label, seconds in rows:
        print(f"  {label:<42} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
