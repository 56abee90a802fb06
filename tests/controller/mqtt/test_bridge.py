"""The MQTT bridge on real brokers (Mosquitto, amqtt) and real databases (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, func, select, text
from sqlmodel import Session

from controller.db import make_engine
from controller.devices.tables import (
    DeviceEventRecord,
    DeviceModelRecord,
    DeviceRecord,
    telemetry_table,
)
from controller.errors import BridgeError, ConfigError
from controller.migrate import upgrade_database
from controller.mqtt.bridge import MqttBridge, check_bridge_settings
from controller.settings import Settings, load_settings
from protocol import Channel, ModelState, State, device_topic
from tests.brokers import BrokerEndpoint, MosquittoServer
from tests.controller.mqtt.test_ingest import (
    RELEASE,
    add_assignment,
    add_devices,
    assignment,
    event,
    verdict,
)
from tests.controller.mqtt.test_telemetry import batch, window

WAIT_S = 30.0
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


def settings_for(broker: BrokerEndpoint, prefix: str, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "broker": broker.url,
        "topic_prefix": prefix,
        "controller_id": f"test-{uuid.uuid4().hex[:8]}",
        "ingest_flush_s": 0.05,
    }
    values.update(overrides)
    return load_settings(environ={}, overrides=values)


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait until ``check()`` holds (it may read the database: it runs in a thread)."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not await asyncio.to_thread(check):
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@asynccontextmanager
async def running(bridge: MqttBridge) -> AsyncIterator[MqttBridge]:
    task = asyncio.create_task(bridge.run())
    try:
        await eventually(lambda: bridge.connected or task.done(), "the bridge to connect")
        assert not task.done(), task
        yield bridge
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def device_client(broker: BrokerEndpoint) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        broker.host, broker.port, identifier=f"device-{uuid.uuid4().hex[:8]}"
    ) as client:
        yield client


async def publish(
    client: aiomqtt.Client,
    prefix: str,
    device_id: str,
    channel: Channel,
    payload: bytes,
    *,
    retain: bool = False,
) -> None:
    topic = device_topic(prefix, device_id, channel)
    await client.publish(topic, payload, qos=1, retain=retain)


def sample(bridge: MqttBridge, name: str, **labels: str) -> float:
    return bridge.metrics.registry.get_sample_value(name, labels) or 0.0


def telemetry_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(telemetry_table)) or 0)


def event_rows(engine: Engine) -> int:
    table = DeviceEventRecord.__table__  # type: ignore[attr-defined]
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(table)) or 0)


def device_row(engine: Engine, device_id: str) -> DeviceRecord:
    with Session(engine) as session:
        row = session.get(DeviceRecord, device_id)
        assert row is not None
        return row


def run(scenario: Any) -> None:
    asyncio.run(scenario)


# -- what one bridge stores ------------------------------------------------------------------


def test_reports_are_stored_and_redelivered_events_applied_once(
    broker: BrokerEndpoint, engine: Engine, topic_prefix: str, tmp_path: Path
) -> None:
    add_devices(engine, "dev-1")
    add_assignment(engine, "dev-1", 7)
    bridge = MqttBridge(settings=settings_for(broker, topic_prefix, tmp_path), engine=engine)
    state = State(
        device_id="dev-1",
        online=True,
        phase="committed",
        models=[ModelState(model="digits", phase="committed", active=RELEASE)],
        reported_at=T0,
    )
    committed = event("dev-1", 5, "committed")
    telemetry = batch("dev-1", window(T0)).to_payload()

    async def scenario() -> None:
        async with running(bridge), device_client(broker) as device:
            await publish(device, topic_prefix, "dev-1", Channel.STATE, state.to_payload())
            for payload in (committed.to_payload(), committed.to_payload()):
                await publish(device, topic_prefix, "dev-1", Channel.EVENTS, payload)
            await publish(
                device,
                topic_prefix,
                "dev-1",
                Channel.EVENTS,
                verdict("dev-1", 4, "commit_unobserved").to_payload(),
            )
            for _ in range(2):
                await publish(device, topic_prefix, "dev-1", Channel.TELEMETRY, telemetry)
            await eventually(
                lambda: (
                    sample(bridge, "edgefleet_bridge_stored_total", kind="telemetry") == 1
                    and sample(bridge, "edgefleet_bridge_messages_total", channel="telemetry") == 2
                    and sample(bridge, "edgefleet_bridge_stored_total", kind="events")
                    + sample(bridge, "edgefleet_bridge_stored_total", kind="duplicate_events")
                    == 3
                ),
                "every report written",
            )

    run(scenario())

    assert assignment(engine, "dev-1").outcome == "committed_unobserved"
    assert (event_rows(engine), telemetry_rows(engine)) == (2, 1)
    row = device_row(engine, "dev-1")
    assert (row.online, row.phase) == (True, "committed")
    with Session(engine) as session:
        digits = session.get(DeviceModelRecord, ("dev-1", "digits"))
    assert digits is not None
    assert (digits.phase, digits.active_version) == ("committed", 2)


def test_a_payload_naming_another_device_is_dropped(
    broker: BrokerEndpoint, engine: Engine, topic_prefix: str, tmp_path: Path
) -> None:
    add_devices(engine, "dev-1", "dev-2")
    bridge = MqttBridge(settings=settings_for(broker, topic_prefix, tmp_path), engine=engine)
    forged = State(device_id="dev-2", online=True, phase="committed", reported_at=T0)
    honest = State(device_id="dev-1", online=True, phase="idle", reported_at=T0)

    async def scenario() -> None:
        async with running(bridge), device_client(broker) as device:
            for payload in (forged.to_payload(), honest.to_payload()):
                await publish(device, topic_prefix, "dev-1", Channel.STATE, payload)
            await eventually(lambda: device_row(engine, "dev-1").online, "dev-1's own state")

    run(scenario())

    assert sample(bridge, "edgefleet_bridge_dropped_total", reason="forged") == 1
    assert device_row(engine, "dev-2").online is False
    assert device_row(engine, "dev-1").phase == "idle"


def test_malformed_messages_do_not_stop_the_bridge(
    broker: BrokerEndpoint, engine: Engine, topic_prefix: str, tmp_path: Path
) -> None:
    add_devices(engine, "dev-1")
    bridge = MqttBridge(settings=settings_for(broker, topic_prefix, tmp_path), engine=engine)
    garbage = [
        (Channel.TELEMETRY, b"{not json"),
        (Channel.EVENTS, b"\xff\xfe\x00"),
        (Channel.EVENTS, b'{"device_id": "dev-1", "seq": -1}'),
        (Channel.TELEMETRY, b"[]"),
    ]

    async def scenario() -> None:
        async with running(bridge), device_client(broker) as device:
            for channel, payload in garbage:
                await publish(device, topic_prefix, "dev-1", channel, payload)
            await device.publish(f"{topic_prefix}/not a device/telemetry", b"{}", qos=1)
            good = batch("dev-1", window(T0)).to_payload()
            await publish(device, topic_prefix, "dev-1", Channel.TELEMETRY, good)
            await eventually(lambda: telemetry_rows(engine) == 1, "the good window")
            assert bridge.connected

    run(scenario())

    assert sample(bridge, "edgefleet_bridge_dropped_total", reason="invalid") == len(garbage)
    assert sample(bridge, "edgefleet_bridge_dropped_total", reason="topic") == 1


def test_a_batch_the_database_cannot_take_is_retried_until_it_can(
    mosquitto: BrokerEndpoint, engine: Engine, topic_prefix: str, tmp_path: Path
) -> None:
    add_devices(engine, "dev-1")
    # Batches of 5 and a queue of 20: most of the 100 windows wait in the broker, unacked.
    settings = settings_for(mosquitto, topic_prefix, tmp_path, ingest_batch_size=5)
    bridge = MqttBridge(settings=settings, engine=engine)
    sent = 100

    def rename(old: str, new: str) -> None:
        with engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))

    async def scenario() -> None:
        async with running(bridge), device_client(mosquitto) as device:
            await asyncio.to_thread(rename, "telemetry", "telemetry_away")
            for index in range(sent):
                payload = batch("dev-1", window(T0 + timedelta(seconds=10 * index))).to_payload()
                await publish(device, topic_prefix, "dev-1", Channel.TELEMETRY, payload)
            await eventually(
                lambda: sample(bridge, "edgefleet_bridge_write_failures_total") >= 1,
                "failed writes",
            )
            await asyncio.to_thread(rename, "telemetry_away", "telemetry")
            await eventually(lambda: telemetry_rows(engine) == sent, "every window")

    run(scenario())

    assert sample(bridge, "edgefleet_bridge_messages_total", channel="telemetry") == sent
    assert sample(bridge, "edgefleet_bridge_held_acks_total") > 0


# -- connections and sessions ----------------------------------------------------------------


def test_the_bridge_reconnects_after_a_broker_restart_and_announces_it(
    restartable_mosquitto: MosquittoServer, engine: Engine, topic_prefix: str, tmp_path: Path
) -> None:
    broker = restartable_mosquitto.endpoint
    add_devices(engine, "dev-1")
    connected: list[bool] = []

    async def on_connected() -> None:
        connected.append(bridge.connected)

    bridge = MqttBridge(
        settings=settings_for(broker, topic_prefix, tmp_path),
        engine=engine,
        on_connected=on_connected,
    )

    async def scenario() -> None:
        async with running(bridge):
            await eventually(lambda: len(connected) == 1, "the first announcement")
            await asyncio.to_thread(restartable_mosquitto.restart)
            await eventually(lambda: len(connected) == 2, "the announcement after the restart")
            async with device_client(broker) as device:
                payload = batch("dev-1", window(T0)).to_payload()
                await publish(device, topic_prefix, "dev-1", Channel.TELEMETRY, payload)
            await eventually(lambda: telemetry_rows(engine) == 1, "a window after the restart")

    run(scenario())

    assert connected == [True, True]


@pytest.mark.parametrize("group", ["", "controllers"])
def test_reports_published_while_the_bridge_is_down_arrive_when_it_returns(
    mosquitto: BrokerEndpoint, engine: Engine, topic_prefix: str, tmp_path: Path, group: str
) -> None:
    add_devices(engine, "dev-1")
    settings = settings_for(mosquitto, topic_prefix, tmp_path, shared_subscription_group=group)

    async def scenario() -> None:
        async with running(MqttBridge(settings=settings, engine=engine)):
            pass  # the broker now keeps a session, with its subscriptions, for this client id
        async with device_client(mosquitto) as device:
            payload = batch("dev-1", window(T0)).to_payload()
            await publish(device, topic_prefix, "dev-1", Channel.TELEMETRY, payload)
            committed = event("dev-1", 1, "committed").to_payload()
            await publish(device, topic_prefix, "dev-1", Channel.EVENTS, committed)
        async with running(MqttBridge(settings=settings, engine=engine)):
            await eventually(
                lambda: telemetry_rows(engine) == 1 and event_rows(engine) == 1,
                "what was published while the bridge was down",
            )

    run(scenario())


def test_a_retained_state_reaches_a_bridge_reading_a_shared_subscription(
    mosquitto: BrokerEndpoint, engine: Engine, topic_prefix: str, tmp_path: Path
) -> None:
    add_devices(engine, "dev-1")
    settings = settings_for(
        mosquitto, topic_prefix, tmp_path, shared_subscription_group="controllers"
    )
    state = State(device_id="dev-1", online=True, phase="idle", reported_at=T0)

    async def scenario() -> None:
        async with device_client(mosquitto) as device:
            await publish(
                device, topic_prefix, "dev-1", Channel.STATE, state.to_payload(), retain=True
            )
        async with running(MqttBridge(settings=settings, engine=engine)):
            await eventually(lambda: device_row(engine, "dev-1").online, "the retained state")

    run(scenario())


def test_two_bridges_sharing_a_subscription_store_each_window_and_event_once(
    mosquitto: BrokerEndpoint, postgres_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    engine = make_engine(postgres_url)
    upgrade_database(engine)
    device_ids = [f"dev-{index}" for index in range(10)]
    add_devices(engine, *device_ids)
    bridges = [
        MqttBridge(
            settings=settings_for(
                mosquitto, topic_prefix, tmp_path, shared_subscription_group="controllers"
            ),
            engine=engine,
            registry=CollectorRegistry(),
        )
        for _ in range(2)
    ]
    windows_per_device, events_per_device = 20, 5

    def received(channel: str) -> float:
        name = "edgefleet_bridge_messages_total"
        return sum(sample(bridge, name, channel=channel) for bridge in bridges)

    async def scenario() -> None:
        async with running(bridges[0]), running(bridges[1]), device_client(mosquitto) as device:
            for device_id in device_ids:
                for index in range(windows_per_device):
                    start = T0 + timedelta(seconds=10 * index)
                    payload = batch(device_id, window(start), seq=index + 1).to_payload()
                    await publish(device, topic_prefix, device_id, Channel.TELEMETRY, payload)
                for seq in range(1, events_per_device + 1):
                    payload = event(device_id, seq, "fetching").to_payload()
                    await publish(device, topic_prefix, device_id, Channel.EVENTS, payload)
            await eventually(
                lambda: (
                    telemetry_rows(engine) == len(device_ids) * windows_per_device
                    and event_rows(engine) == len(device_ids) * events_per_device
                ),
                "every window and event",
            )

    try:
        run(scenario())
        assert received("telemetry") == len(device_ids) * windows_per_device
        assert received("events") == len(device_ids) * events_per_device
        assert all(
            sample(b, "edgefleet_bridge_messages_total", channel="telemetry") for b in bridges
        )
    finally:
        engine.dispose()


# -- settings and publishing -----------------------------------------------------------------


def test_shared_subscriptions_on_the_embedded_broker_are_refused(
    engine: Engine, tmp_path: Path
) -> None:
    settings = load_settings(
        environ={},
        overrides={"data_dir": tmp_path, "broker": "embedded", "shared_subscription_group": "g"},
    )

    with pytest.raises(ConfigError, match="embedded amqtt broker does not implement"):
        check_bridge_settings(settings)
    with pytest.raises(ConfigError, match="shared_subscription_group"):
        MqttBridge(settings=settings, engine=engine)


def test_a_broker_url_the_bridge_cannot_use_is_refused(engine: Engine, tmp_path: Path) -> None:
    settings = load_settings(
        environ={}, overrides={"data_dir": tmp_path, "broker": "http://example.com"}
    )

    with pytest.raises(ConfigError, match="mqtt://host:port"):
        check_bridge_settings(settings)


def test_publishing_waits_for_the_broker_and_fails_without_it(
    broker: BrokerEndpoint, engine: Engine, topic_prefix: str, tmp_path: Path
) -> None:
    bridge = MqttBridge(settings=settings_for(broker, topic_prefix, tmp_path), engine=engine)
    topic = device_topic(topic_prefix, "dev-1", Channel.DESIRED)

    async def scenario() -> None:
        with pytest.raises(BridgeError, match="not connected"):
            await bridge.publish(topic, b"deployment", retain=True)
        async with running(bridge):
            await bridge.publish(topic, b"deployment", retain=True)
        async with device_client(broker) as device:
            await device.subscribe(topic, qos=1)
            async with asyncio.timeout(WAIT_S):
                message = await anext(aiter(device.messages))
        assert (message.payload, message.retain) == (b"deployment", True)

    run(scenario())


def test_reports_still_queued_are_written_when_the_bridge_stops(
    mosquitto: BrokerEndpoint, engine: Engine, topic_prefix: str, tmp_path: Path
) -> None:
    add_devices(engine, "dev-1")
    # A batch never fills and the flush waits long: only stopping writes the windows.
    settings = settings_for(mosquitto, topic_prefix, tmp_path, ingest_flush_s=3600)
    bridge = MqttBridge(settings=settings, engine=engine)

    async def scenario() -> None:
        async with running(bridge), device_client(mosquitto) as device:
            for index in range(3):
                payload = batch("dev-1", window(T0 + timedelta(seconds=10 * index))).to_payload()
                await publish(device, topic_prefix, "dev-1", Channel.TELEMETRY, payload)
            await eventually(
                lambda: sample(bridge, "edgefleet_bridge_messages_total", channel="telemetry") == 3,
                "three windows received",
            )
            assert telemetry_rows(engine) == 0

    run(scenario())

    assert telemetry_rows(engine) == 3
