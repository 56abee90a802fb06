"""A cancellation during an acknowledgement wait is never swallowed: a stopped link or
bridge returns instead of looping on (``asyncio.wait_for`` on Python 3.11 could swallow a
cancellation that arrived as the acknowledgement did)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

from agent.link.mqtt import MqttLink
from agent.link.outbox import Outbox
from controller.db import make_engine
from controller.mqtt.bridge import MqttBridge
from controller.settings import load_settings
from mqttlink import Message, MqttConnection, wait_acknowledged
from protocol import Channel, device_topic
from tests.agent.link.conftest import LinkRunner, fast_settings
from tests.agent.link.device_topics import DeviceTopics
from tests.brokers import BrokerEndpoint
from tests.mqtt_client import TestClient
from tests.mqttlink.conftest import WAIT_S, settings_for, silent_broker
from tests.mqttlink.test_connection import run
from tests.tcp_proxy import TcpProxy

ProxyTo = Callable[[BrokerEndpoint], TcpProxy]


def test_a_cancellation_arriving_with_the_acknowledgement_is_not_swallowed() -> None:
    async def scenario() -> bool:
        acknowledgement = asyncio.get_running_loop().create_future()
        waiter = asyncio.create_task(
            wait_acknowledged(acknowledgement, timeout_s=WAIT_S, what="PUBACK for a/b")
        )
        await asyncio.sleep(0)  # the waiter now awaits the acknowledgement
        acknowledgement.set_result(None)
        waiter.cancel()  # in the same turn of the loop as the PUBACK
        await asyncio.wait([waiter])
        return waiter.cancelled()

    assert run(scenario())


def test_cancelling_a_publish_that_awaits_its_puback_cancels_it() -> None:
    async def scenario() -> bool:
        async with silent_broker(connack=True) as silent:
            connection = MqttConnection(settings_for(silent, "cancel-test", ack_timeout_s=WAIT_S))
            await connection.connect()
            publishing = asyncio.create_task(connection.publish(Message("a/b", b"x", qos=1)))
            await asyncio.sleep(0)
            publishing.cancel()
            await asyncio.wait([publishing])
            connection.drop()
            return publishing.cancelled()

    assert run(scenario())


def test_the_link_stops_while_a_puback_is_awaited_and_keeps_the_message(
    mosquitto: BrokerEndpoint, proxy_to: ProxyTo, topic_prefix: str, tmp_path: Path
) -> None:
    device = DeviceTopics(topic_prefix)
    proxy = proxy_to(mosquitto)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    # A PUBACK wait that ends only by its timeout would outlast the bounded stop below.
    link = MqttLink(
        fast_settings(proxy.endpoint, ack_timeout_s=3 * WAIT_S),
        outbox=outbox,
        will=device.will,
        birth=device.birth,
        subscriptions=[],
    )
    runner = LinkRunner(link).start()
    try:
        with TestClient(mosquitto) as observer:
            observer.subscribe(device.state)
            assert observer.receive().payload == device.birth.payload
        proxy.black_hole = True
        runner.publish(device.event(1))
        proxy.wait_for_swallowed()  # the PUBLISH is gone: the drainer awaits its PUBACK
        proxy.black_hole = False  # let the will and the DISCONNECT through

        runner.stop(timeout_s=WAIT_S)

        assert runner.error is None
        assert [message.payload for message in outbox.peek(10)] == [device.event(1).payload]
    finally:
        outbox.close()


def test_the_bridge_stops_while_a_puback_is_awaited(
    mosquitto: BrokerEndpoint, proxy_to: ProxyTo, topic_prefix: str, tmp_path: Path
) -> None:
    proxy = proxy_to(mosquitto)
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": tmp_path / "data",
            "broker": proxy.endpoint.url,
            "topic_prefix": topic_prefix,
            "controller_id": f"test-{uuid.uuid4().hex[:8]}",
        },
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'controller.db'}")
    bridge = MqttBridge(settings=settings, engine=engine)
    topic = device_topic(topic_prefix, "dev-1", Channel.DESIRED)

    async def scenario() -> tuple[bool, bool]:
        running = asyncio.create_task(bridge.run())
        while not bridge.connected:
            assert not running.done(), running
            await asyncio.sleep(0.01)
        proxy.black_hole = True
        publishing = asyncio.create_task(bridge.publish(topic, b"deployment", retain=True))
        await asyncio.to_thread(proxy.wait_for_swallowed)
        publishing.cancel()
        running.cancel()
        await asyncio.wait([publishing, running])
        return publishing.cancelled(), running.cancelled()

    try:
        assert run(scenario()) == (True, True)
    finally:
        engine.dispose()
