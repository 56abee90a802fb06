"""One ``MqttConnection`` against real brokers (Mosquitto, amqtt), and against a fake
broker that never acknowledges: every wait ends in ``LinkTimeoutError``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from mqttlink import (
    ConnectionFailedError,
    LinkTimeoutError,
    Message,
    MqttConnection,
    ReceivedMessage,
)
from tests.brokers import BrokerEndpoint, free_port
from tests.mqtt_client import TestClient
from tests.mqttlink.conftest import WAIT_S, settings_for, silent_broker

_T = TypeVar("_T")


def run(scenario: Coroutine[Any, Any, _T]) -> _T:
    async def bounded() -> _T:
        async with asyncio.timeout(WAIT_S):
            return await scenario

    return asyncio.run(bounded())


def client_id() -> str:
    return f"mqttlink-test-{uuid.uuid4().hex[:8]}"


async def first_message(connection: MqttConnection) -> ReceivedMessage:
    async for message in connection.messages():
        return message
    raise AssertionError("unreachable: messages() ends by raising")


def test_a_connection_subscribes_publishes_and_receives(
    broker: BrokerEndpoint, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}/dev-1/events"

    async def scenario() -> tuple[dict[str, str], ReceivedMessage]:
        connection = MqttConnection(settings_for(broker, client_id()))
        await connection.connect()
        refused = await connection.subscribe([(f"{topic_prefix}/+/events", 1)])
        await connection.publish(Message(topic, b"event-1", qos=1))
        received = await first_message(connection)
        await connection.disconnect()
        assert not connection.is_open
        return refused, received

    refused, received = run(scenario())

    assert refused == {}
    assert received == ReceivedMessage(topic, b"event-1", qos=1, retain=False)


def test_dropping_a_connection_makes_the_broker_publish_the_will(
    broker: BrokerEndpoint, topic_prefix: str
) -> None:
    will = Message(f"{topic_prefix}/dev-1/state", b"offline", qos=1, retain=True)

    async def scenario(observer: TestClient) -> bytes:
        connection = MqttConnection(settings_for(broker, client_id()), will=will)
        await connection.connect()
        connection.drop()
        message = await asyncio.to_thread(observer.receive)
        return bytes(message.payload)

    with TestClient(broker) as observer:
        observer.subscribe(will.topic)
        assert run(scenario(observer)) == b"offline"


def test_publishing_without_a_connection_is_a_connection_error(
    mosquitto: BrokerEndpoint,
) -> None:
    connection = MqttConnection(settings_for(mosquitto, client_id()))

    with pytest.raises(ConnectionFailedError, match="not connected"):
        run(connection.publish(Message("a/b", b"x")))


def test_nothing_listening_is_a_connection_error() -> None:
    nobody = BrokerEndpoint("none", "127.0.0.1", free_port())
    connection = MqttConnection(settings_for(nobody, client_id()))

    with pytest.raises(ConnectionFailedError, match="cannot connect"):
        run(connection.connect())
    assert not connection.is_open


def test_a_broker_that_never_sends_connack_times_out() -> None:
    async def scenario() -> None:
        async with silent_broker(connack=False) as silent:
            connection = MqttConnection(settings_for(silent, client_id(), connect_timeout_s=0.3))
            await connection.connect()

    with pytest.raises(LinkTimeoutError, match="no CONNACK"):
        run(scenario())


def test_a_broker_that_never_sends_suback_times_out() -> None:
    async def scenario() -> None:
        async with silent_broker(connack=True) as silent:
            connection = MqttConnection(settings_for(silent, client_id(), ack_timeout_s=0.3))
            await connection.connect()
            try:
                await connection.subscribe([("a/+/desired", 1)])
            finally:
                connection.drop()

    with pytest.raises(LinkTimeoutError, match="no SUBACK"):
        run(scenario())


def test_a_broker_that_never_sends_puback_times_out() -> None:
    async def scenario() -> None:
        async with silent_broker(connack=True) as silent:
            connection = MqttConnection(settings_for(silent, client_id(), ack_timeout_s=0.3))
            await connection.connect()
            try:
                await connection.publish(Message("a/dev-1/events", b"event-1", qos=1))
            finally:
                connection.drop()

    with pytest.raises(LinkTimeoutError, match="no PUBACK for a/dev-1/events"):
        run(scenario())
