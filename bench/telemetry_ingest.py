"""Telemetry ingest through the MQTT bridge against a bare paho subscriber; prints a table.

Run from the repository root: ``.venv/bin/python bench/telemetry_ingest.py``. PostgreSQL
rows need ``EDGEFLEET_TEST_POSTGRES_URL`` (a fresh schema is created and dropped).

Setup: a Mosquitto of its own on a free port (``tests.brokers.MosquittoServer``, with
``max_queued_messages 0`` so an offline session may hold the whole backlog), ``--devices``
devices enrolled directly in each database, and ``--messages`` realistic telemetry
messages: one ``TelemetryBatch`` each with one window (a 55-bound latency histogram, ten
class counts, two drift figures: about 1 KB of canonical JSON), round-robin over the
devices, every window distinct.

Each round measures three consumers the same way: the consumer's persistent session is
made (connect, subscribe to ``{prefix}/+/telemetry`` at QoS 1, disconnect); a separate
process publishes the messages with paho (QoS 1) into that session while the consumer is
away; then the consumer connects and the clock runs from its connect until
(a) bare paho (``loop_start``, an ``on_message`` that only counts) has received them all,
(b) the bridge (``MqttBridge``, default settings but ``--batch-size``) has committed every
    row, for SQLite (WAL file) and for PostgreSQL; the table is emptied before each run.
Publishing from a backlog measures the consumers, not the publisher: a Python paho
publisher is slower than both (its rate is printed too). Rates are medians over
``--rounds`` rounds, the consumers interleaved within each round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, delete, func, insert, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.db import make_engine
from controller.devices.tables import DeviceRecord, telemetry_table
from controller.migrate import upgrade_database
from controller.mqtt.bridge import MqttBridge
from controller.mqtt.nats_ingest import NatsIngest
from controller.settings import Settings, load_settings
from protocol import LatencySummary, ReleaseRef, TelemetryBatch, TelemetryWindow
from tests.brokers import MosquittoServer, find_mosquitto
from tests.nats_cluster import NatsCluster, find_nats_server

PREFIX = "bench/v1"
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
BOUNDS_MS = [float(f"{0.05 * 10 ** (k / 10):.4g}") for k in range(55)]
TIMEOUT_S = 600.0
POSTGRES_URL_ENV = "EDGEFLEET_TEST_POSTGRES_URL"
TARGET_SQLITE_ROWS_S = 10_000
TARGET_RATIO = 0.5


def payloads(devices: int, messages: int) -> Iterator[tuple[str, bytes]]:
    rng = random.Random(7)  # noqa: S311 - made-up figures, not secrets
    release = ReleaseRef(model="digits", version=3, sha256="ab" * 32)
    for index in range(messages):
        device_id = f"dev-{index % devices:05d}"
        window = TelemetryWindow(
            model="digits",
            release=release,
            window_start=T0 + timedelta(seconds=10 * (index // devices)),
            window_s=10.0,
            requests=rng.randint(50, 500),
            errors=rng.randint(0, 3),
            nonfinite_outputs=0,
            latency=LatencySummary(
                p50_ms=1.2 + rng.random(),
                p95_ms=3.4 + rng.random(),
                p99_ms=5.6 + rng.random(),
                bounds_ms=BOUNDS_MS,
                counts=[rng.randint(0, 40) for _ in range(len(BOUNDS_MS) + 1)],
            ),
            top1_confidence_mean=0.8 + rng.random() / 10,
            class_counts=[rng.randint(0, 60) for _ in range(10)],
            drift_psi={"input": rng.random() / 20, "output": rng.random() / 20},
        )
        batch = TelemetryBatch(device_id=device_id, seq=index // devices + 1, windows=[window])
        yield f"{PREFIX}/{device_id}/telemetry", batch.to_payload()


def publish_main(port: int, devices: int, messages: int) -> None:
    """The publisher process: every message at QoS 1, then wait for the last PUBACK."""
    prepared = list(payloads(devices, messages))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in prepared]
    for info in infos:
        info.wait_for_publish(TIMEOUT_S)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    print(f"{messages / elapsed:.0f}")


def publish(port: int, devices: int, messages: int) -> float:
    """Run the publisher process; returns its rate (messages/s)."""
    done = subprocess.run(  # noqa: S603 - this very script, by path
        [sys.executable, __file__, "publish", str(port), str(devices), str(messages)],
        check=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    return float(done.stdout.strip().splitlines()[-1])


def bare_paho_rate(port: int, devices: int, messages: int) -> tuple[float, float]:
    client_id = f"bare-{uuid.uuid4().hex[:8]}"

    def client() -> mqtt.Client:
        return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)

    setup = client()
    subscribed = threading.Event()
    setup.on_subscribe = lambda *_args: subscribed.set()
    setup.connect("127.0.0.1", port)
    setup.loop_start()
    setup.subscribe(f"{PREFIX}/+/telemetry", qos=1)
    if not subscribed.wait(10):
        raise RuntimeError("no SUBACK for the bare subscriber")
    setup.disconnect()
    setup.loop_stop()
    publish_rate = publish(port, devices, messages)

    received = 0
    finished = threading.Event()

    def on_message(_client: mqtt.Client, _userdata: object, _message: mqtt.MQTTMessage) -> None:
        nonlocal received
        received += 1
        if received == messages:
            finished.set()

    consumer = client()
    consumer.on_message = on_message
    started = time.perf_counter()
    consumer.connect("127.0.0.1", port)
    consumer.loop_start()
    if not finished.wait(TIMEOUT_S):
        raise RuntimeError(f"bare paho received {received} of {messages}")
    elapsed = time.perf_counter() - started
    consumer.disconnect()
    consumer.loop_stop()
    return messages / elapsed, publish_rate


def bridge_rate(
    port: int,
    engine: Engine,
    database_url: str,
    data_dir: Path,
    args: argparse.Namespace,
) -> tuple[float, float]:
    devices, messages = args.devices, args.messages
    with engine.begin() as connection:
        # TRUNCATE on PostgreSQL: deleted rows would stay in the unique index until vacuumed.
        if engine.dialect.name == "postgresql":
            connection.execute(text("TRUNCATE telemetry"))
        else:
            connection.execute(delete(telemetry_table))
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": data_dir,
            "database_url": database_url,
            "broker": f"mqtt://127.0.0.1:{port}",
            "topic_prefix": PREFIX,
            "controller_id": f"bench-{uuid.uuid4().hex[:8]}",
            "ingest_batch_size": args.batch_size,
        },
    )

    async def until(condition: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                await asyncio.sleep(0.01)

    async def session_only() -> None:
        bridge = MqttBridge(settings=settings, engine=engine, registry=CollectorRegistry())
        task = asyncio.create_task(bridge.run())
        await until(lambda: bridge.connected, 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def drain() -> float:
        bridge = MqttBridge(settings=settings, engine=engine, registry=CollectorRegistry())
        registry = bridge.metrics.registry

        def stored() -> float:
            value = registry.get_sample_value(
                "edgefleet_bridge_stored_total", {"kind": "telemetry"}
            )
            return value or 0.0

        started = time.perf_counter()
        task = asyncio.create_task(bridge.run())
        await until(lambda: stored() >= messages or task.done(), TIMEOUT_S)
        elapsed = time.perf_counter() - started
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return elapsed

    asyncio.run(session_only())
    publish_rate = publish(port, devices, messages)
    elapsed = asyncio.run(drain())
    with engine.connect() as connection:
        rows = connection.scalar(select(func.count()).select_from(telemetry_table))
    if rows != messages:
        raise RuntimeError(f"the bridge stored {rows} rows of {messages}")
    return messages / elapsed, publish_rate


def nats_rate(
    cluster: NatsCluster,
    engine: Engine,
    database_url: str,
    data_dir: Path,
    args: argparse.Namespace,
) -> tuple[float, float]:
    """(c): devices publish over MQTT to a NATS node; the controller's NATS ingest drains
    the JetStream stream (3 copies) into the database, as every replica would."""
    devices, messages = args.devices, args.messages
    with engine.begin() as connection:
        connection.execute(delete(telemetry_table))
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": data_dir,
            "database_url": database_url,
            "broker": cluster.mqtt_url,
            "nats_url": cluster.nats_url,
            "nats_stream": f"BENCH_{uuid.uuid4().hex[:8]}",
            "topic_prefix": PREFIX,
            "controller_id": f"bench-{uuid.uuid4().hex[:8]}",
            "ingest_batch_size": args.batch_size,
        },
    )
    registry = CollectorRegistry()
    bridge = MqttBridge(settings=settings, engine=engine, registry=registry)

    def stored() -> float:
        value = registry.get_sample_value("edgefleet_bridge_stored_total", {"kind": "telemetry"})
        return value or 0.0

    async def run_until(condition: Callable[[NatsIngest], bool]) -> float:
        ingest = NatsIngest(settings, bridge)
        started = time.perf_counter()
        task = asyncio.create_task(ingest.run())
        async with asyncio.timeout(TIMEOUT_S):
            while not condition(ingest) and not task.done():
                await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        if task.done():
            task.result()  # the ingest stopped: raise what stopped it
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return elapsed

    # The first start creates the stream and the consumer; the messages then wait there.
    asyncio.run(run_until(lambda ingest: ingest.connected))
    publish_rate = publish(cluster.nodes[0].mqtt_port, devices, messages)
    elapsed = asyncio.run(run_until(lambda _ingest: stored() >= messages))
    asyncio.run(delete_stream(cluster, settings.nats_stream))  # the next round makes its own
    with engine.connect() as connection:
        rows = connection.scalar(select(func.count()).select_from(telemetry_table))
    if rows != messages:
        raise RuntimeError(f"the NATS ingest stored {rows} rows of {messages}")
    return messages / elapsed, publish_rate


async def delete_stream(cluster: NatsCluster, name: str) -> None:
    client = await nats.connect(servers=cluster.nats_url.split(","))
    try:
        await client.jetstream().delete_stream(name)
    finally:
        await client.close()


def enroll(engine: Engine, devices: int) -> None:
    upgrade_database(engine)
    table = DeviceRecord.__table__  # type: ignore[attr-defined]
    with engine.begin() as connection:
        connection.execute(
            insert(table),
            [
                {
                    "id": f"dev-{index:05d}",
                    "labels": {},
                    "mqtt_password_hash": "-",
                    "enrolled_at": T0,
                    "online": True,
                    "next_deployment_sequence": 1,
                    "next_command_sequence": 1,
                }
                for index in range(devices)
            ],
        )


@contextmanager
def postgres_schema() -> Iterator[str | None]:
    base_url = os.environ.get(POSTGRES_URL_ENV)
    if not base_url:
        yield None
        return
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base_url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base_url, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--batch-size", type=int, default=Settings.model_fields["ingest_batch_size"].default
    )
    parser.add_argument(
        "--no-nats",
        dest="nats",
        action="store_false",
        help="skip (c), the NATS cluster (it runs when nats-server is installed)",
    )
    args = parser.parse_args()
    mosquitto = find_mosquitto()
    if mosquitto is None:
        raise SystemExit("mosquitto is not installed")
    rates: dict[str, list[float]] = {}
    publish_rates: list[float] = []
    nats_publish_rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, postgres_schema() as postgres_url:
        workdir = Path(tmp)
        broker = MosquittoServer(
            mosquitto,
            workdir,
            extra_config=os.environ.get("BENCH_MOSQUITTO_EXTRA", "")
            + "allow_anonymous true\nmax_queued_messages 0\n",
        )
        databases = {"SQLite": f"sqlite:///{workdir / 'bench.db'}"}
        if postgres_url:
            databases["PostgreSQL"] = postgres_url
        engines = {name: make_engine(url) for name, url in databases.items()}
        for engine in engines.values():
            enroll(engine, args.devices)
        broker.start()
        nats_binary = find_nats_server() if args.nats else None
        cluster = NatsCluster(nats_binary, workdir / "nats") if nats_binary else None
        if cluster is not None:
            cluster.start()
        try:
            for _ in range(args.rounds):
                rate, published = bare_paho_rate(broker.port, args.devices, args.messages)
                rates.setdefault("bare", []).append(rate)
                publish_rates.append(published)
                for name, engine in engines.items():
                    rate, published = bridge_rate(
                        broker.port, engine, databases[name], workdir, args
                    )
                    rates.setdefault(name, []).append(rate)
                    publish_rates.append(published)
                if cluster is not None:
                    rate, published = nats_rate(
                        cluster, engines["SQLite"], databases["SQLite"], workdir, args
                    )
                    rates.setdefault("NATS", []).append(rate)
                    nats_publish_rates.append(published)
        finally:
            if cluster is not None:
                cluster.stop()
            broker.stop()
            for engine in engines.values():
                engine.dispose()
        versions = _versions(engines)
    report(args, rates, publish_rates, nats_publish_rates, versions)


def _versions(engines: dict[str, Engine]) -> str:
    found = [f"SQLite {sqlite3.sqlite_version}"]
    if "PostgreSQL" in engines:
        with engines["PostgreSQL"].connect() as connection:
            found.append(str(connection.scalar(text("SHOW server_version"))).split()[0])
            found[-1] = f"PostgreSQL {found[-1]}"
    mosquitto = subprocess.run(  # noqa: S603 - the broker the benchmark runs
        [find_mosquitto() or "mosquitto", "-h"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    found.append(mosquitto[0].replace("mosquitto version", "Mosquitto") if mosquitto else "")
    return ", ".join(found)


def report(
    args: argparse.Namespace,
    rates: dict[str, list[float]],
    publish_rates: list[float],
    nats_publish_rates: list[float],
    versions: str,
) -> None:
    bare = statistics.median(rates["bare"])
    print("## Telemetry ingest\n")
    print(
        f"{args.messages} telemetry messages (one window each, about 1 KB) from {args.devices} "
        f"devices, QoS 1, drained from a persistent session; bridge batches of "
        f"{args.batch_size}; median of {args.rounds} rounds "
        f"(smallest to largest in brackets). Python {platform.python_version()}, {versions}, "
        f"{os.cpu_count()} CPUs.\n"
    )
    print(row("consumer", "rate", "vs bare paho", "target", "met"))
    print(row("---", "---:", "---:", "---", "---"))
    print(row("(a) bare paho subscriber", _rate(rates["bare"], "msg/s"), "1.00x", "—", "—"))
    for name in ("SQLite", "PostgreSQL"):
        if name not in rates:
            print(
                row(f"(b) bridge into {name}", f"not measured (set {POSTGRES_URL_ENV})", "", "", "")
            )
            continue
        median = statistics.median(rates[name])
        ratio = median / bare
        if name == "SQLite":
            met = median >= TARGET_SQLITE_ROWS_S and ratio >= TARGET_RATIO
            target = f"≥ {TARGET_SQLITE_ROWS_S:,} rows/s and ≥ {TARGET_RATIO}x"
        else:
            met = ratio >= TARGET_RATIO
            target = f"(≥ {TARGET_RATIO}x)"
        print(
            row(
                f"(b) bridge into {name}",
                _rate(rates[name], "rows/s"),
                f"{ratio:.2f}x",
                target,
                "yes" if met else "no",
            )
        )
    if "NATS" in rates:
        print(
            row(
                "(c) NATS cluster (3 nodes, stream with 3 copies) into SQLite",
                _rate(rates["NATS"], "rows/s"),
                f"{statistics.median(rates['NATS']) / bare:.2f}x",
                "—",
                "—",
            )
        )
    print(
        row(
            "publisher (paho, separate process)",
            _rate(publish_rates, "msg/s"),
            f"{statistics.median(publish_rates) / bare:.2f}x",
            "—",
            "—",
        )
    )
    if nats_publish_rates:
        print(
            row(
                "publisher into NATS (MQTT to one node)",
                _rate(nats_publish_rates, "msg/s"),
                f"{statistics.median(nats_publish_rates) / bare:.2f}x",
                "—",
                "—",
            )
        )


def _rate(values: list[float], unit: str) -> str:
    return f"{statistics.median(values):,.0f} {unit} ({min(values):,.0f} to {max(values):,.0f})"


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "publish":
        publish_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
