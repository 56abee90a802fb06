"""The controller's embedded amqtt broker does not leak retained messages across clients.

amqtt 0.12 offered a reconnecting persistent session the retained messages of every topic
filter any client had subscribed to; ``EmbeddedBroker`` offers only the client's own.
"""

from __future__ import annotations

import queue
import time

import paho.mqtt.client as mqtt

from tests.brokers import BrokerEndpoint

TIMEOUT_S = 10.0


class _PersistentClient:
    """A paho client with a persistent session (clean_session=False), as agents use."""

    def __init__(self, endpoint: BrokerEndpoint, client_id: str) -> None:
        self.endpoint = endpoint
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self._acks: queue.Queue[str] = queue.Queue()
        self.client.on_connect = lambda *_args: self._acks.put("connect")
        self.client.on_subscribe = lambda *_args: self._acks.put("subscribe")
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)

    def connect(self) -> None:
        self.client.connect(self.endpoint.host, self.endpoint.port, keepalive=30)
        self.client.loop_start()
        assert self._acks.get(timeout=TIMEOUT_S) == "connect"

    def subscribe(self, topic_filter: str) -> None:
        self.client.subscribe(topic_filter, qos=1)
        assert self._acks.get(timeout=TIMEOUT_S) == "subscribe"

    def publish_retained(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(TIMEOUT_S)

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def topics_received(self, quiet_s: float) -> list[str]:
        """Every topic received until nothing arrived for ``quiet_s``."""
        topics = []
        while True:
            try:
                topics.append(self.messages.get(timeout=quiet_s).topic)
            except queue.Empty:
                return topics


def test_a_reconnecting_session_gets_only_its_own_retained_messages(
    amqtt_broker: BrokerEndpoint,
) -> None:
    device_a = _PersistentClient(amqtt_broker, "device-a")
    device_b = _PersistentClient(amqtt_broker, "device-b")
    device_a.connect()
    device_b.connect()
    device_a.subscribe("fleet/device-a/desired")
    device_b.subscribe("fleet/device-b/desired")
    device_a.publish_retained("fleet/device-a/desired", b"for a")
    device_b.publish_retained("fleet/device-b/desired", b"for b")
    assert device_a.topics_received(quiet_s=1.0) == ["fleet/device-a/desired"]

    device_a.disconnect()
    time.sleep(0.2)  # let the broker see the session go (no timing is asserted)
    device_a.connect()

    assert "fleet/device-b/desired" not in device_a.topics_received(quiet_s=2.0)
    device_a.disconnect()
    device_b.disconnect()
