"""The fast ingest mode on real brokers: paho's callback straight to ours, a buffered
socket, and acknowledgements sent only when the caller releases them."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from mqttlink import Ack, FastIngest, Message, MqttConnection
from mqttlink.ingest import BufferedSocket
from tests.brokers import BrokerEndpoint
from tests.mqttlink.conftest import settings_for
from tests.mqttlink.test_connection import run


class Collector:
    """A fast ingest callback: records payloads, holds the acks it is told to hold."""

    def __init__(self, *, expected: int, hold: frozenset[bytes] = frozenset()) -> None:
        self.payloads: list[bytes] = []
        self.held: list[Ack] = []
        self.expected = expected
        self.hold = hold
        self.all_arrived = asyncio.Event()

    def __call__(self, _topic: str, payload: bytes, ack: Ack | None) -> None:
        if payload == b"poison":
            raise ValueError("a message the callback cannot handle")
        self.payloads.append(bytes(payload))
        if ack is not None:
            if payload in self.hold:
                self.held.append(ack)
            else:
                ack.release()
        if len(self.payloads) >= self.expected:
            self.all_arrived.set()


async def subscriber(
    endpoint: BrokerEndpoint, client_id: str, topic: str, collector: Collector
) -> MqttConnection:
    connection = MqttConnection(
        settings_for(endpoint, client_id), fast_ingest=FastIngest(collector)
    )
    await connection.connect()
    assert await connection.subscribe([(topic, 1)]) == {}
    return connection


async def publisher(endpoint: BrokerEndpoint) -> MqttConnection:
    connection = MqttConnection(settings_for(endpoint, f"publisher-{uuid.uuid4().hex[:8]}"))
    await connection.connect()
    return connection


def test_a_burst_arrives_whole_and_in_order_through_the_buffered_socket(
    broker: BrokerEndpoint, topic_prefix: str
) -> None:
    topic, count = f"{topic_prefix}/dev-1/telemetry", 1000
    sent = [f"window-{index}".encode() for index in range(count)]

    async def scenario() -> tuple[list[bytes], bool]:
        collector = Collector(expected=count)
        reader = await subscriber(broker, f"sub-{uuid.uuid4().hex[:8]}", topic, collector)
        buffered = isinstance(reader._paho.socket() if reader._paho else None, BufferedSocket)
        writer = await publisher(broker)
        for payload in sent:  # QoS 0: no round trip each, so packets arrive back to back
            await writer.publish(Message(topic, payload, qos=0))
        await collector.all_arrived.wait()
        await writer.disconnect()
        await reader.disconnect()
        return collector.payloads, buffered

    payloads, buffered = run(scenario())

    assert buffered
    assert payloads == sent


def test_a_message_whose_ack_was_not_released_comes_again_on_the_next_connection(
    mosquitto: BrokerEndpoint, topic_prefix: str
) -> None:
    topic, client_id = f"{topic_prefix}/dev-1/events", f"sub-{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[bytes]:
        first = Collector(expected=2, hold=frozenset({b"event-2"}))
        reader = await subscriber(mosquitto, client_id, topic, first)
        writer = await publisher(mosquitto)
        for payload in (b"event-1", b"event-2"):
            await writer.publish(Message(topic, payload, qos=1))
        await first.all_arrived.wait()
        await reader.disconnect()  # the PUBACK of event-1 is sent before the DISCONNECT
        first.held[0].release()  # too late: the connection is closed, nothing is sent

        again = Collector(expected=2)
        reader = await subscriber(mosquitto, client_id, topic, again)
        await writer.publish(Message(topic, b"event-3", qos=1))
        await again.all_arrived.wait()
        await writer.disconnect()
        await reader.disconnect()
        return again.payloads

    assert run(scenario()) == [b"event-2", b"event-3"]


def test_a_callback_that_raises_does_not_break_the_connection(
    mosquitto: BrokerEndpoint, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"{topic_prefix}/dev-1/events"

    async def scenario() -> tuple[list[bytes], bool]:
        collector = Collector(expected=1)
        reader = await subscriber(mosquitto, f"sub-{uuid.uuid4().hex[:8]}", topic, collector)
        writer = await publisher(mosquitto)
        await writer.publish(Message(topic, b"poison", qos=1))
        await writer.publish(Message(topic, b"event-1", qos=1))
        await collector.all_arrived.wait()
        still_open = reader.is_open
        await writer.disconnect()
        await reader.disconnect()
        return collector.payloads, still_open

    with caplog.at_level(logging.ERROR, logger="mqttlink.connection"):
        payloads, still_open = run(scenario())

    assert payloads == [b"event-1"]
    assert still_open
    assert "the message callback failed" in caplog.text
