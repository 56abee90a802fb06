"""A small synchronous paho-mqtt client for tests that talk to a real broker."""

from __future__ import annotations

import queue
import ssl
import uuid
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt

from tests.brokers import BrokerEndpoint

ACK_TIMEOUT_S = 10.0


class TestClient:
    """Connects on enter, disconnects on exit; received messages land in a queue."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        client_id: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected: queue.Queue[Any] = queue.Queue()
        self._subscribed: queue.Queue[int] = queue.Queue()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls_context is not None:
            self._client.tls_set_context(tls_context)
        self._client.on_connect = self._on_connect
        self._client.reconnect_delay_set(min_delay=0.1, max_delay=1)
        self._topic_filters: list[tuple[str, int]] = []
        self._client.on_subscribe = lambda _c, _u, mid, _r, _p: self._subscribed.put(mid)
        self._client.on_message = lambda _c, _u, message: self.messages.put(message)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        # After a broker restart, subscribe again: the new broker knows nothing of us.
        for topic_filter, qos in self._topic_filters:
            self._client.subscribe(topic_filter, qos=qos)
        self._connected.put(reason)

    def __enter__(self) -> TestClient:
        self._client.connect(self.endpoint.host, self.endpoint.port, keepalive=30)
        self._client.loop_start()
        reason = self._connected.get(timeout=ACK_TIMEOUT_S)
        if reason.is_failure:
            raise ConnectionError(f"MQTT connect refused: {reason}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout=ACK_TIMEOUT_S)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic}")

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        self._topic_filters.append((topic_filter, qos))
        _result, mid = self._client.subscribe(topic_filter, qos=qos)
        while self._subscribed.get(timeout=ACK_TIMEOUT_S) != mid:
            pass

    def receive(self, timeout_s: float = ACK_TIMEOUT_S) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout_s)
