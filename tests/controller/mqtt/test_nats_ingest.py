"""Device reports through a real 3-node NATS cluster: devices publish over MQTT on any
node, controllers read them from JetStream through one shared durable consumer, and the
users and permissions come from ``edgefleet devices nats-config``."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from sqlalchemy import Engine

from controller.db import make_engine, session_scope
from controller.devices.credentials import hash_nats_password
from controller.devices.nats_config import nats_authorization, write_nats_authorization
from controller.devices.tables import DeviceRecord
from controller.errors import BrokerAuthError, ConfigError
from controller.migrate import upgrade_database
from controller.mqtt.bridge import MqttBridge, check_bridge_settings
from controller.mqtt.nats_ingest import NatsIngest, subject_topic
from controller.settings import Settings, load_settings
from protocol import Channel, device_topic
from tests.conftest import require_service
from tests.controller.mqtt.test_bridge import event_rows, eventually, sample
from tests.controller.mqtt.test_ingest import event
from tests.nats_cluster import NatsCluster, find_nats_server

CONTROLLER_USER = "edgefleet-controller"
CONTROLLER_PASSWORD = "controller-secret-for-tests"
DEVICE_PASSWORD = "device-secret-for-tests"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    binary = find_nats_server()
    if binary is None:
        require_service("nats-server", "install it with 'apt-get install nats-server'")
        raise AssertionError("unreachable")
    running = NatsCluster(binary, tmp_path_factory.mktemp("nats"))
    running.auth_file.write_text(
        nats_authorization("unused", [], (CONTROLLER_USER, hash_nats_password(CONTROLLER_PASSWORD)))
    )
    running.start(CONTROLLER_USER, CONTROLLER_PASSWORD)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def prefix() -> str:
    return f"edgefleet-test/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    upgrade_database(engine)
    yield engine
    engine.dispose()


def nats_settings(cluster: NatsCluster, prefix: str, tmp_path: Path, **more: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": f"sqlite:///{tmp_path / 'controller.db'}",
        "broker": cluster.mqtt_url,
        "nats_url": cluster.nats_url,
        "mqtt_username": CONTROLLER_USER,
        "mqtt_password": CONTROLLER_PASSWORD,
        "topic_prefix": prefix,
        "controller_id": f"test-{uuid.uuid4().hex[:8]}",
        # One stream and consumer per test: the cluster is shared by the module.
        "nats_stream": f"REPORTS_{uuid.uuid4().hex[:8]}",
        "nats_consumer": "controllers",
        "ingest_batch_size": 10,
    }
    values.update(more)
    return load_settings(environ={}, overrides=values)


def enroll(engine: Engine, *device_ids: str) -> None:
    """Devices as enrollment leaves them: both hashes of their MQTT password."""
    with session_scope(engine) as session:
        for device_id in device_ids:
            session.add(
                DeviceRecord(
                    id=device_id,
                    mqtt_password_hash="-",
                    nats_password_hash=hash_nats_password(DEVICE_PASSWORD),
                )
            )


def allow_devices(cluster: NatsCluster, settings: Settings) -> None:
    """What an operator does: ``edgefleet devices nats-config``, then a reload."""
    export = write_nats_authorization(settings, cluster.auth_file)
    assert export.controller_user == CONTROLLER_USER
    cluster.reload()


@asynccontextmanager
async def replica(settings: Settings, engine: Engine) -> AsyncIterator[MqttBridge]:
    """One controller's reading half: its bridge (to store) and its NATS ingest."""
    bridge = MqttBridge(settings=settings, engine=engine)
    ingest = NatsIngest(settings, bridge)
    task = asyncio.create_task(ingest.run())
    try:
        await eventually(lambda: ingest.connected or task.done(), "the NATS ingest to start")
        assert not task.done(), task
        yield bridge
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def device(cluster: NatsCluster, node: int, device_id: str) -> AsyncIterator[aiomqtt.Client]:
    endpoint = cluster.nodes[node].mqtt
    async with aiomqtt.Client(
        endpoint.host,
        endpoint.port,
        identifier=device_id,
        username=device_id,
        password=DEVICE_PASSWORD,
        clean_session=False,
    ) as client:
        yield client


async def publish_events(client: aiomqtt.Client, prefix: str, device_id: str, seqs: range) -> None:
    topic = device_topic(prefix, device_id, Channel.EVENTS)
    for seq in seqs:
        await client.publish(topic, event(device_id, seq, "fetching").to_payload(), qos=1)


def test_subjects_map_back_to_the_topics_devices_published() -> None:
    assert subject_topic("edgefleet.v1.cam-1.state") == "edgefleet/v1/cam-1/state"
    # NATS 2.10 and later write a '.' inside a level as '//'.
    assert subject_topic("edgefleet.v1.cam//1.events") == "edgefleet/v1/cam.1/events"


def test_reports_published_on_every_node_are_split_between_two_controllers_and_stored_once(
    cluster: NatsCluster, engine: Engine, prefix: str, tmp_path: Path
) -> None:
    devices = ["dev-1", "dev-2", "dev-3"]
    enroll(engine, *devices)
    first = nats_settings(cluster, prefix, tmp_path)
    second = first.model_copy(update={"controller_id": "second"})
    allow_devices(cluster, first)

    async def scenario() -> tuple[float, float]:
        async with replica(first, engine) as one, replica(second, engine) as two:
            async with (
                device(cluster, 0, devices[0]) as a,
                device(cluster, 1, devices[1]) as b,
                device(cluster, 2, devices[2]) as c,
            ):
                for client, device_id in zip((a, b, c), devices, strict=True):
                    await publish_events(client, prefix, device_id, range(1, 101))
                # Each event once more: MQTT delivers at least once.
                await publish_events(a, prefix, devices[0], range(1, 11))
            await eventually(lambda: event_rows(engine) == 300, "300 events stored")
            read = "edgefleet_bridge_messages_total"
            await eventually(
                lambda: (
                    sample(one, read, channel="events") + sample(two, read, channel="events") == 310
                ),
                "every message read once",
            )
            return sample(one, read, channel="events"), sample(two, read, channel="events")

    first_share, second_share = asyncio.run(scenario())

    assert event_rows(engine) == 300
    assert first_share > 0, (first_share, second_share)
    assert second_share > 0, (first_share, second_share)


def test_reports_sent_while_no_controller_runs_are_stored_when_one_starts(
    cluster: NatsCluster, engine: Engine, prefix: str, tmp_path: Path
) -> None:
    enroll(engine, "dev-1")
    settings = nats_settings(cluster, prefix, tmp_path)
    allow_devices(cluster, settings)

    async def scenario() -> None:
        # The stream and consumer exist from the controller's first start.
        async with replica(settings, engine):
            pass
        async with device(cluster, 2, "dev-1") as client:
            await publish_events(client, prefix, "dev-1", range(1, 51))
        assert event_rows(engine) == 0
        async with replica(settings, engine):
            await eventually(lambda: event_rows(engine) == 50, "the events sent while down")

    asyncio.run(scenario())


def test_a_device_can_neither_read_nor_write_another_devices_subjects(
    cluster: NatsCluster, engine: Engine, prefix: str, tmp_path: Path
) -> None:
    enroll(engine, "dev-1", "dev-2")
    settings = nats_settings(cluster, prefix, tmp_path)
    allow_devices(cluster, settings)
    secret = b"dev-2's deployment"

    async def scenario() -> dict[str, Any]:
        async with replica(settings, engine) as bridge, device(cluster, 0, "dev-1") as spy:
            refused = {}
            for topic_filter in (
                device_topic(prefix, "dev-2", Channel.DESIRED),
                device_topic(prefix, "dev-2", Channel.CMD),
                f"{prefix}/#",
                "#",
                "$MQTT/sub/#",
                "$MQTT/#",
            ):
                codes = await spy.subscribe(topic_filter, qos=1)
                refused[topic_filter] = [str(code) for code in codes]
            # A forged report: dev-1 publishing on dev-2's topic.
            forged = event("dev-2", 1, "committed").to_payload()
            await spy.publish(device_topic(prefix, "dev-2", Channel.EVENTS), forged, qos=1)
            await publish_events(spy, prefix, "dev-1", range(1, 2))
            # The controller publishes dev-2's desired state, retained.
            async with aiomqtt.Client(
                "127.0.0.1",
                cluster.nodes[1].mqtt_port,
                identifier="controller-publisher",
                username=CONTROLLER_USER,
                password=CONTROLLER_PASSWORD,
            ) as controller:
                topic = device_topic(prefix, "dev-2", Channel.DESIRED)
                await controller.publish(topic, secret, qos=1, retain=True)
            got: list[bytes] = []
            try:
                async with asyncio.timeout(2):
                    async for message in spy.messages:
                        got.append(bytes(message.payload))
            except TimeoutError:
                pass
            await eventually(lambda: event_rows(engine) == 1, "dev-1's own event")
            return {"refused": refused, "got": got, "bridge": bridge}

    outcome = asyncio.run(scenario())

    for topic_filter, codes in outcome["refused"].items():
        assert all("Granted" not in code for code in codes), (topic_filter, codes)
    assert secret not in outcome["got"]
    assert event_rows(engine) == 1  # dev-1's own; the forged one never reached the stream


def test_refused_controller_credentials_end_the_ingest_with_broker_auth_error(
    cluster: NatsCluster, engine: Engine, prefix: str, tmp_path: Path
) -> None:
    settings = nats_settings(cluster, prefix, tmp_path, mqtt_password="wrong")
    bridge = MqttBridge(settings=settings, engine=engine)

    async def scenario() -> None:
        async with asyncio.timeout(30):
            await NatsIngest(settings, bridge).run()

    with pytest.raises(BrokerAuthError, match="refused the controller's credentials"):
        asyncio.run(scenario())


@pytest.mark.parametrize(
    ("more", "message"),
    [
        ({"broker": "embedded"}, "MQTT listener of the NATS nodes"),
        ({"shared_subscription_group": "g"}, "exclude each other"),
        ({"topic_prefix": "edgefleet.v1"}, "has a '.'"),
    ],
)
def test_settings_nats_cannot_run_with_are_refused_at_start(
    tmp_path: Path, more: dict[str, str], message: str
) -> None:
    values = {
        "data_dir": tmp_path,
        "broker": "mqtt://127.0.0.1:1883",
        "nats_url": "nats://127.0.0.1:4222",
        **more,
    }
    with pytest.raises(ConfigError, match=message):
        check_bridge_settings(load_settings(environ={}, overrides=values))


def test_nats_config_needs_the_controllers_login(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path})
    with pytest.raises(ConfigError, match="mqtt_username and mqtt_password"):
        write_nats_authorization(settings, tmp_path / "auth.conf")


def test_reports_a_stopping_controller_could_not_write_go_to_another_at_once(
    cluster: NatsCluster, engine: Engine, prefix: str, tmp_path: Path
) -> None:
    stuck_path = tmp_path / "stuck" / "controller.db"
    stuck_path.parent.mkdir()
    stuck_engine = make_engine(f"sqlite:///{stuck_path}")
    upgrade_database(stuck_engine)
    enroll(engine, "dev-1")
    enroll(stuck_engine, "dev-1")
    settings = nats_settings(cluster, prefix, tmp_path)
    # One fetch takes all 20.
    stuck_settings = settings.model_copy(update={"controller_id": "stuck", "ingest_batch_size": 20})
    allow_devices(cluster, settings)
    # Another writer holds the stuck replica's database: its writes wait and retry.
    holder = sqlite3.connect(stuck_path, isolation_level=None)

    async def scenario() -> None:
        async with replica(settings, engine):
            pass  # the stream and the consumer exist from here
        async with device(cluster, 1, "dev-1") as client:
            await publish_events(client, prefix, "dev-1", range(1, 21))
        holder.execute("BEGIN EXCLUSIVE")
        async with replica(stuck_settings, stuck_engine) as stuck:
            read = "edgefleet_bridge_messages_total"
            await eventually(lambda: sample(stuck, read, channel="events") == 20, "a fetch")
        holder.rollback()  # lets the stopped replica's last write thread end
        # Stopped with all 20 taken and none written: it gave them back, so the other
        # replica stores them now, not after the server's ack wait of 60 s.
        async with replica(settings, engine):
            await eventually(lambda: event_rows(engine) == 20, "the events given back")

    try:
        asyncio.run(scenario())
    finally:
        holder.close()
        stuck_engine.dispose()


def test_a_reload_while_the_controller_has_retained_desired_state_keeps_nats_running(
    cluster: NatsCluster, engine: Engine, prefix: str, tmp_path: Path
) -> None:
    # NATS 2.9 checks each retained message against its publisher's permissions at a
    # reload, and crashed on a publisher with none (the controller): every node at once.
    enroll(engine, "dev-1")
    settings = nats_settings(cluster, prefix, tmp_path)
    allow_devices(cluster, settings)

    async def publish_retained() -> None:
        async with aiomqtt.Client(
            "127.0.0.1",
            cluster.nodes[0].mqtt_port,
            identifier="controller-publisher",
            username=CONTROLLER_USER,
            password=CONTROLLER_PASSWORD,
        ) as controller:
            topic = device_topic(prefix, "dev-1", Channel.DESIRED)
            await controller.publish(topic, b"deployment", qos=1, retain=True)

    asyncio.run(publish_retained())
    enroll(engine, "dev-2")
    allow_devices(cluster, settings)  # what the operator does after each enrollment
    time.sleep(1)

    assert all(node.process is not None and node.process.poll() is None for node in cluster.nodes)
    cluster.wait_ready(CONTROLLER_USER, CONTROLLER_PASSWORD)
