"""The controller's MQTT client: reads what devices report, publishes desired state.

One adapter over aiomqtt (and paho beneath it). paho's message callback only decodes the
message into a report and appends it to the bridge's queue; a writer task stores the
queue in batches of ``ingest_batch_size`` reports, or whatever arrived within
``ingest_flush_s`` of the first, through ``ingest.write_reports`` in a worker thread.
Two reaches into paho, for the ingest rate (``docs/benchmarks.md``): its message callback
is ours rather than aiomqtt's, and it reads a plain TCP socket through a buffer.

Invariants:
- one persistent session per controller (``settings.mqtt_client_id``; MQTT 3.1.1 with
  ``clean_session=False``, or MQTT v5 with ``clean_start=False`` and a week of session
  expiry), so device messages published while the controller is down wait in the broker;
- every (re)connect subscribes again from the bridge's own list, then awaits
  ``on_connected`` (the broker may have restarted without its sessions);
- with ``shared_subscription_group``, events and telemetry are read as MQTT v5 shared
  subscriptions, so each message reaches one controller; states are read directly by
  every controller, because a broker never sends retained messages to a shared
  subscription (MQTT 5 §4.8.2), and applying a state twice changes nothing;
- a message is acknowledged (PUBACK, in arrival order) once its report is queued; while
  the queue holds ``QUEUE_BATCHES`` batches, acknowledgements wait, so the broker stops
  sending after its in-flight window instead of the controller's memory growing;
- one bad message never breaks the bridge: it is dropped and counted by reason;
- a batch whose write fails is logged and retried with backoff, never dropped silently;
  after ``DATA_ERROR_ATTEMPTS`` refusals of its data (not of the connection) it is split,
  and a single report the database still refuses is logged with its content and counted;
- acknowledged reports not yet written are lost if the process dies (the broker has
  forgotten them): at most the queue. Cancelling ``run()`` writes them before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError

from protocol import Channel, Event, State, TelemetryBatch, TopicError, subscription_filter
from protocol.topics import verify_prefix

from ..errors import ConfigError, ControllerError
from ..settings import Settings
from .ingest import Dropped, QueuedReport, WrittenReports, decode_report, write_reports
from .metrics import BridgeMetrics
from .telemetry import telemetry_rows

__all__ = ["BridgeError", "MqttBridge", "check_bridge_settings"]

logger = logging.getLogger(__name__)

ACK_TIMEOUT_S = 10.0  # CONNACK, SUBACK, PUBACK
CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
SESSION_EXPIRY_S = 7 * 86400
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
QUEUE_BATCHES = 4
DATA_ERROR_ATTEMPTS = 3
FINAL_FLUSH_TIMEOUT_S = 10.0
DROP_LOG_INTERVAL_S = 60.0
SOCKET_READ_BYTES = 256 * 1024
_CHANNEL_OF = {State: Channel.STATE, Event: Channel.EVENTS, TelemetryBatch: Channel.TELEMETRY}


class BridgeError(ControllerError):
    """The bridge cannot publish now: not connected, or no acknowledgement in time."""


def check_bridge_settings(settings: Settings) -> None:
    """Raise ``ConfigError`` for settings the bridge cannot run with."""
    if settings.shared_subscription_group and settings.broker == "embedded":
        raise ConfigError(
            "shared_subscription_group needs an external broker (Mosquitto, EMQX, HiveMQ…): "
            "the embedded amqtt broker does not implement MQTT v5 shared subscriptions (a "
            "$share/… filter there was seen receiving a retained message of another topic). "
            "Set broker to mqtt://host:port, or leave shared_subscription_group empty."
        )
    _broker_address(settings.broker_url)
    try:
        verify_prefix(settings.topic_prefix)
        _subscriptions(settings)
    except TopicError as exc:
        raise ConfigError(f"invalid MQTT settings: {exc}") from exc


def _broker_address(url: str) -> tuple[str, int, bool]:
    """Host, port and whether to use TLS, from ``mqtt://host:port`` or ``mqtts://…``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"broker URL {url!r} is not mqtt://host:port or mqtts://host:port")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"broker URL {url!r} has an invalid port") from exc
    return parts.hostname, port, tls


def _subscriptions(settings: Settings) -> list[tuple[str, int]]:
    group = settings.shared_subscription_group or None
    prefix = settings.topic_prefix
    return [
        (subscription_filter(prefix, Channel.STATE), 1),
        (subscription_filter(prefix, Channel.EVENTS, shared_group=group), 1),
        (subscription_filter(prefix, Channel.TELEMETRY, shared_group=group), 1),
    ]


class MqttBridge:
    """Keeps the controller subscribed to device reports and stores them; publishes."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        registry: CollectorRegistry | None = None,
        on_connected: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        check_bridge_settings(settings)
        self._settings = settings
        self._engine = engine
        self._on_connected = on_connected
        self.metrics = BridgeMetrics(registry or CollectorRegistry())
        self._host, self._port, tls = _broker_address(settings.broker_url)
        self._tls_context = ssl.create_default_context() if tls else None
        self._v5 = bool(settings.shared_subscription_group)
        self._subscriptions = _subscriptions(settings)
        self._batch_size = settings.ingest_batch_size
        self._queue_limit = QUEUE_BATCHES * settings.ingest_batch_size
        # (received_at_s, report); appended by paho's callback, taken by the writer.
        self._queue: deque[tuple[float, QueuedReport]] = deque()
        self._owed_acks: deque[tuple[paho.Client, int, int]] = deque()
        self._wakeup = asyncio.Event()
        self._writing: list[tuple[float, QueuedReport]] = []
        self._client: aiomqtt.Client | None = None
        self._paho: paho.Client | None = None  # the current connection's, from its connect
        self._connected = False
        self._drop_logged_at: dict[str, float] = {}
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret

    @property
    def connected(self) -> bool:
        """True while connected and subscribed; publishing works only then."""
        return self._connected

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; raises ``BridgeError``."""
        client = self._client
        if client is None or not self._connected:
            raise BridgeError(f"not connected to the broker: cannot publish to {topic}")
        try:
            await asyncio.wait_for(
                client.publish(topic, payload, qos=1, retain=retain, timeout=math.inf),
                ACK_TIMEOUT_S,
            )
        except TimeoutError as exc:
            raise BridgeError(f"no PUBACK for {topic} within {ACK_TIMEOUT_S} s") from exc
        except aiomqtt.MqttError as exc:
            raise BridgeError(f"cannot publish to {topic}: {exc}") from exc

    async def run(self) -> None:
        """Connect, subscribe, read and store, reconnecting with jittered backoff, until
        cancelled; then write what is queued (for at most ``FINAL_FLUSH_TIMEOUT_S``)."""
        writer = asyncio.create_task(self._write_forever(), name="mqtt-bridge-writer")
        failures = 0
        try:
            while True:
                started_s = time.monotonic()
                try:
                    await self._session()
                except (aiomqtt.MqttError, BridgeError, OSError) as exc:
                    reason = str(exc) or type(exc).__name__
                except Exception as exc:
                    logger.exception("MQTT bridge session failed")
                    reason = f"{type(exc).__name__}: {exc}"
                else:  # pragma: no cover - a session only ends by an error
                    reason = "the message stream ended"
                if time.monotonic() - started_s >= BACKOFF_MAX_S:
                    failures = 0  # only a connection that held resets the backoff
                delay_s = self._rng.uniform(0, min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2**failures))
                failures = min(failures + 1, 32)
                logger.warning(
                    "MQTT bridge to %s:%d down (%s); retrying in %.2f s",
                    self._host,
                    self._port,
                    reason,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await self._final_flush()

    # -- one connection ------------------------------------------------------------------

    async def _session(self) -> None:
        client = self._new_client()
        # Acknowledgements owed on a dead connection are void; those of this one count
        # from its first message, which may arrive before __aenter__ returns.
        self._owed_acks.clear()
        self._paho = client._client
        await client.__aenter__()
        announce: asyncio.Task[None] | None = None
        try:
            _buffer_socket(client)
            codes: Sequence[int | ReasonCode] = await asyncio.wait_for(
                client.subscribe(self._subscriptions, timeout=math.inf), ACK_TIMEOUT_S
            )
            for (topic_filter, _qos), code in zip(self._subscriptions, codes, strict=False):
                if _is_failure(code):
                    logger.error(
                        "the broker refused the subscription to %s (%s)", topic_filter, code
                    )
            self._client, self._connected = client, True
            self.metrics.connected.set(1)
            self.metrics.connects.inc()
            logger.info("MQTT bridge connected to %s:%d", self._host, self._port)
            if self._on_connected is not None:
                announce = asyncio.create_task(self._announce(), name="mqtt-bridge-connected")
            # Reports arrive through paho's callback; this only waits for the connection
            # to end (aiomqtt raises MqttError then).
            async for _message in client.messages:  # pragma: no cover - never yields
                pass
            raise BridgeError("the broker's message stream ended")
        except TimeoutError as exc:
            raise BridgeError(f"no SUBACK within {ACK_TIMEOUT_S} s") from exc
        finally:
            self._connected, self._client, self._paho = False, None, None
            self.metrics.connected.set(0)
            if announce is not None:
                announce.cancel()
            await self._disconnect(client)

    def _new_client(self) -> aiomqtt.Client:
        settings = self._settings
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        client = aiomqtt.Client(
            self._host,
            self._port,
            username=settings.mqtt_username or None,
            password=settings.mqtt_password or None,
            identifier=settings.mqtt_client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if self._v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if self._v5 else False,
            clean_start=False if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            keepalive=KEEPALIVE_S,
            timeout=CONNECT_TIMEOUT_S,
            tls_context=self._tls_context,
        )
        inner = client._client
        inner.connect_timeout = CONNECT_TIMEOUT_S
        # Decode in paho's callback and acknowledge ourselves, once the report is queued:
        # no per-message object, task and queue hop of aiomqtt's iterator (a third of the
        # ingest rate), and the acknowledgements give back-pressure.
        inner.manual_ack_set(True)
        inner.on_message = self._on_message
        return client

    async def _announce(self) -> None:
        assert self._on_connected is not None
        try:
            await self._on_connected()
        except Exception:
            logger.exception("on_connected failed; the bridge carries on")

    async def _disconnect(self, client: aiomqtt.Client) -> None:
        try:
            await asyncio.wait_for(client.__aexit__(None, None, None), CONNECT_TIMEOUT_S)
        except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
            logger.debug("MQTT bridge did not disconnect cleanly: %s", exc)

    # -- receiving (paho's thread is the event loop's: aiomqtt drives paho from it) ------

    def _on_message(self, client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            self._accept(message.topic, message.payload)
        except Exception:
            # An exception here would reach paho's read loop and cut the connection.
            logger.exception("a message could not be handled; dropping it")
        if message.qos > 0:
            if self._owed_acks or len(self._queue) >= self._queue_limit:
                self._owed_acks.append((client, message.mid, message.qos))
                self.metrics.held_acks.inc()
            else:
                client.ack(message.mid, message.qos)

    def _accept(self, topic: str, payload: bytes | bytearray) -> None:
        report = decode_report(self._settings.topic_prefix, topic, payload)
        if isinstance(report, Dropped):
            self._dropped(report)
            return
        self.metrics.received[_CHANNEL_OF[type(report)]].inc()
        queue, received_s = self._queue, time.time()
        was_empty = not queue
        if isinstance(report, TelemetryBatch):
            queue.extend((received_s, row) for row in telemetry_rows((report,)))
        else:
            queue.append((received_s, report))
        if was_empty or len(queue) >= self._batch_size:
            self._wakeup.set()

    def _dropped(self, dropped: Dropped) -> None:
        self.metrics.dropped[dropped.reason].inc()
        now_s = time.monotonic()
        if now_s - self._drop_logged_at.get(dropped.reason, -math.inf) >= DROP_LOG_INTERVAL_S:
            self._drop_logged_at[dropped.reason] = now_s
            logger.warning(
                "dropped a device message (%s); more such drops are counted, not logged, "
                "for %.0f s",
                dropped.detail,
                DROP_LOG_INTERVAL_S,
            )

    def _release_acks(self) -> None:
        """Send the acknowledgements that waited for room in the queue, in order."""
        if len(self._queue) >= self._queue_limit:
            return
        while self._owed_acks:
            client, mid, qos = self._owed_acks.popleft()
            if client is self._paho:
                client.ack(mid, qos)

    # -- writing -------------------------------------------------------------------------

    async def _write_forever(self) -> None:
        while True:
            self._writing = await self._next_batch()
            await self._write_with_retry(self._writing)
            self._writing = []

    async def _next_batch(self) -> list[tuple[float, QueuedReport]]:
        """Wait for a report, then for a full batch or ``ingest_flush_s``, and take it."""
        queue, loop = self._queue, asyncio.get_running_loop()
        while not queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = loop.time() + self._settings.ingest_flush_s
        while len(queue) < self._batch_size and (left_s := deadline - loop.time()) > 0:
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), left_s)
        batch = [queue.popleft() for _ in range(min(self._batch_size, len(queue)))]
        self.metrics.queued.set(len(queue))
        self._release_acks()
        return batch

    async def _write_with_retry(self, batch: Sequence[tuple[float, QueuedReport]]) -> None:
        attempt = 0
        while True:
            try:
                with self.metrics.write_seconds.time():
                    written = await asyncio.to_thread(self._write, batch)
            except (DataError, IntegrityError):
                attempt += 1
                self.metrics.write_failures.inc()
                if attempt >= DATA_ERROR_ATTEMPTS:
                    await self._isolate(batch)
                    return
                logger.exception("the database refused a batch of %d reports; retrying", len(batch))
            except Exception:
                attempt += 1
                self.metrics.write_failures.inc()
                delay_s = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** min(attempt, 16))
                logger.exception(
                    "writing %d reports failed (attempt %d); retrying in %.1f s",
                    len(batch),
                    attempt,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
            else:
                self.metrics.count_written(written)
                return

    async def _isolate(self, batch: Sequence[tuple[float, QueuedReport]]) -> None:
        """Write the halves apart, so one report the database refuses holds up no other."""
        if len(batch) > 1:
            half = len(batch) // 2
            await self._write_with_retry(batch[:half])
            await self._write_with_retry(batch[half:])
            return
        self.metrics.refused.inc()
        logger.error("the database refuses this report; dropping it: %r", batch[0][1])

    def _write(self, batch: Sequence[tuple[float, QueuedReport]]) -> WrittenReports:
        received_at_s = max(received_s for received_s, _ in batch)
        reports = [report for _, report in batch]
        return write_reports(
            self._engine, reports, now=datetime.now(UTC), received_at_s=received_at_s
        )

    async def _final_flush(self) -> None:
        """After cancellation: write the batch in flight (again: writes are idempotent)
        and the queue, within ``FINAL_FLUSH_TIMEOUT_S``."""
        left = [*self._writing, *self._queue]
        self._writing, self._queue = [], deque()
        if not left:
            return
        try:
            for start in range(0, len(left), self._batch_size):
                chunk = left[start : start + self._batch_size]
                written = await asyncio.wait_for(
                    asyncio.to_thread(self._write, chunk), FINAL_FLUSH_TIMEOUT_S
                )
                self.metrics.count_written(written)
        except Exception:
            logger.exception("could not write %d reports before stopping", len(left))


class _BufferedSocket:
    """A plain socket read in large chunks: paho reads each packet with three or four
    ``recv`` calls (one byte of header, its length byte by byte, then the rest), which
    costs as much as the rest of its work. ``pending()`` is what aiomqtt's reader asks
    of TLS sockets, so it keeps reading while bytes wait here."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        self._position = 0

    def recv(self, size: int) -> bytes:
        if self._position >= len(self._buffer):
            data = self._sock.recv(SOCKET_READ_BYTES)  # BlockingIOError: nothing waits
            if not data:
                return data
            self._buffer, self._position = data, 0
        start = self._position
        self._position = start + size
        return self._buffer[start : self._position]

    def pending(self) -> int:
        return max(len(self._buffer) - self._position, 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _buffer_socket(client: aiomqtt.Client) -> None:
    """Read through ``_BufferedSocket`` when paho holds a plain TCP socket (TLS sockets
    buffer already). Swapped between two callbacks of the event loop, so nothing paho
    has read or not read is lost: the buffer starts empty."""
    inner = client._client
    sock = getattr(inner, "_sock", None)
    if type(sock) is socket.socket:
        inner._sock = _BufferedSocket(sock)


def _is_failure(code: int | ReasonCode) -> bool:
    return code.is_failure if isinstance(code, ReasonCode) else code >= 0x80
