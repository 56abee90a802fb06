"""The controller's MQTT client: reads what devices report, publishes desired state.

Built on ``mqttlink``, in its fast ingest mode for the ingest rate (``docs/benchmarks.md``):
the message callback only decodes the message into a report and appends it to the
bridge's queue; a writer task stores the queue in batches of ``ingest_batch_size``
reports, or whatever arrived within ``ingest_flush_s`` of the first, through
``ingest.write_reports`` in a worker thread.

Invariants:
- one persistent session per controller (``settings.mqtt_client_id``; MQTT 3.1.1 with
  ``clean_session=False``, or MQTT v5 with ``clean_start=False`` and a week of session
  expiry), so device messages published while the controller is down wait in the broker;
- every (re)connect subscribes again from the bridge's own list, then awaits
  ``on_connected`` (the broker may have restarted without its sessions);
- with ``nats_url`` the bridge subscribes to nothing: ``nats_ingest.NatsIngest`` reads
  the reports from JetStream and hands them to ``store``, and the bridge only publishes
  (MQTT 3.1.1, to the NATS nodes' MQTT listener);
- with several broker nodes in ``broker`` the bridge stays on the one that works and
  moves to the next after a failed connect;
- with ``shared_subscription_group``, events and telemetry are read as MQTT v5 shared
  subscriptions, so each message reaches one controller; states are read directly by
  every controller, because a broker never sends retained messages to a shared
  subscription (MQTT 5 §4.8.2), and applying a state twice changes nothing;
- a message is acknowledged (PUBACK, in arrival order) once its report is queued; while
  the queue holds ``QUEUE_BATCHES`` batches, acknowledgements wait, so the broker stops
  sending after its in-flight window instead of the controller's memory growing;
- one bad message never breaks the bridge: it is dropped and counted by reason;
- every wait for the broker has a timeout (mqttlink's, under ``asyncio.timeout``); a lost
  connection is retried with jittered backoff, but refused credentials end ``run()`` with
  ``BrokerAuthError`` at once: retrying cannot help (``docs/operations.md`` says what the
  controller does then);
- a batch whose write fails is logged and retried with jittered backoff, never dropped
  silently; after ``DATA_ERROR_ATTEMPTS`` refusals of its data (not of the connection) it
  is split, and a single report the database still refuses is logged with its content
  and counted;
- acknowledged reports not yet written are lost if the process dies (the broker has
  forgotten them): at most the queue. Cancelling ``run()`` writes them before it returns,
  and so does ``BrokerAuthError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError

import mqttlink
from protocol import (
    Channel,
    Event,
    State,
    TelemetryBatch,
    TopicError,
    backoff_delay_s,
    subscription_filter,
)
from protocol.topics import verify_prefix

from ..ca import CA_CERT_FILE, controller_client_files
from ..errors import BridgeError, BrokerAuthError, ConfigError
from ..settings import Settings
from .ingest import Dropped, QueuedReport, WrittenReports, decode_report, write_reports
from .metrics import BridgeMetrics
from .telemetry import telemetry_rows

__all__ = ["MqttBridge", "check_bridge_settings"]

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
_CHANNEL_OF = {State: Channel.STATE, Event: Channel.EVENTS, TelemetryBatch: Channel.TELEMETRY}


def check_bridge_settings(settings: Settings) -> None:
    """Raise ``ConfigError`` for settings the bridge cannot run with."""
    if settings.nats_url:
        _check_nats_settings(settings)
    if settings.shared_subscription_group and settings.broker == "embedded":
        raise ConfigError(
            "shared_subscription_group needs an external broker (Mosquitto, EMQX, HiveMQ…): "
            "the embedded amqtt broker does not implement MQTT v5 shared subscriptions (a "
            "$share/… filter there was seen receiving a retained message of another topic). "
            "Set broker to mqtt://host:port, or leave shared_subscription_group empty."
        )
    _session_settings(settings, tls_context=None)
    try:
        verify_prefix(settings.topic_prefix)
        _subscriptions(settings)
    except TopicError as exc:
        raise ConfigError(f"invalid MQTT settings: {exc}") from exc


def _check_nats_settings(settings: Settings) -> None:
    if settings.broker == "embedded":
        raise ConfigError(
            "nats_url needs broker set to the MQTT listener of the NATS nodes "
            "(mqtt://n1:1883,mqtt://n2:1883): the controller publishes desired state there"
        )
    if settings.shared_subscription_group:
        raise ConfigError(
            "nats_url and shared_subscription_group exclude each other: NATS speaks MQTT "
            "3.1.1, without shared subscriptions; replicas share the JetStream consumer "
            "nats_consumer instead. Leave shared_subscription_group empty."
        )
    if "." in settings.topic_prefix:
        raise ConfigError(
            f"topic_prefix {settings.topic_prefix!r} has a '.', which NATS subjects use "
            "between levels; choose a prefix without one"
        )


def _session_settings(
    settings: Settings, *, tls_context: ssl.SSLContext | None
) -> mqttlink.SessionSettings:
    first = _broker_nodes(settings.broker_url)[0]
    host, port = first.host, first.port
    v5 = bool(settings.shared_subscription_group)
    username = settings.mqtt_username or None
    try:
        return mqttlink.SessionSettings(
            host=host,
            port=port,
            client_id=settings.mqtt_client_id,
            username=username,
            # A password alone was never sent (aiomqtt sends none without a username).
            password=(settings.mqtt_password or None) if username else None,
            keepalive_s=KEEPALIVE_S,
            tls_context=tls_context,
            connect_timeout_s=CONNECT_TIMEOUT_S,
            ack_timeout_s=ACK_TIMEOUT_S,
            backoff_initial_s=BACKOFF_INITIAL_S,
            backoff_max_s=BACKOFF_MAX_S,
            version=mqttlink.MqttVersion.V5 if v5 else mqttlink.MqttVersion.V311,
            clean_session=False,
            session_expiry_s=SESSION_EXPIRY_S if v5 else None,
        )
    except mqttlink.SettingsError as exc:
        raise ConfigError(f"invalid MQTT settings: {exc}") from exc


def broker_tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS to an external broker: the system's CAs and, when the controller has its own
    CA, that one too and the controller's client certificate (for a broker that asks
    every client for one, as the Mosquitto configuration edgefleet writes does)."""
    context = ssl.create_default_context()
    ca_file = settings.tls_dir / CA_CERT_FILE
    if ca_file.exists():
        context.load_verify_locations(cafile=str(ca_file))
        cert_file, key_file = controller_client_files(settings)
        if cert_file.exists() and key_file.exists():
            context.load_cert_chain(str(cert_file), str(key_file))
    return context


def _broker_nodes(url: str) -> tuple[mqttlink.BrokerAddress, ...]:
    """The broker's nodes from ``mqtt://host:port`` or ``mqtts://…``, comma-separated."""
    try:
        return mqttlink.parse_broker_urls(url)
    except mqttlink.SettingsError as exc:
        raise ConfigError(f"invalid broker setting: {exc}") from exc


def _subscriptions(settings: Settings) -> list[tuple[str, int]]:
    if settings.nats_url:
        return []  # reports come from JetStream (nats_ingest)
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
        self._nodes = mqttlink.BrokerAddresses(_broker_nodes(settings.broker_url))
        tls = self._nodes.current.tls
        self._session_settings = _session_settings(
            settings, tls_context=broker_tls_context(settings) if tls else None
        )
        self._subscriptions = _subscriptions(settings)
        self._batch_size = settings.ingest_batch_size
        self._queue_limit = QUEUE_BATCHES * settings.ingest_batch_size
        # (received_at_s, report); appended by the message callback, taken by the writer.
        self._queue: deque[tuple[float, QueuedReport]] = deque()
        self._owed_acks: deque[mqttlink.Ack] = deque()
        self._wakeup = asyncio.Event()
        self._writing: list[tuple[float, QueuedReport]] = []
        self._connection: mqttlink.MqttConnection | None = None
        self._connected = False
        self._drop_logged_at: dict[str, float] = {}
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret
        self._backoff = mqttlink.Backoff(
            initial_s=BACKOFF_INITIAL_S, max_s=BACKOFF_MAX_S, rng=self._rng
        )

    @property
    def connected(self) -> bool:
        """True while connected and subscribed; publishing works only then."""
        return self._connected

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK; raises ``BridgeError``."""
        connection = self._connection
        if connection is None or not self._connected:
            raise BridgeError(f"not connected to the broker: cannot publish to {topic}")
        try:
            await connection.publish(mqttlink.Message(topic, payload, qos=1, retain=retain))
        except mqttlink.LinkTimeoutError as exc:
            raise BridgeError(f"no PUBACK for {topic} within {ACK_TIMEOUT_S} s") from exc
        except mqttlink.MqttLinkError as exc:
            raise BridgeError(f"cannot publish to {topic}: {exc}") from exc

    async def run(self) -> None:
        """Connect, subscribe, read and store, reconnecting with jittered backoff, until
        cancelled; then write what is queued (for at most ``FINAL_FLUSH_TIMEOUT_S``).

        Raises ``BrokerAuthError``, after writing the queue, when the broker refuses the
        controller's credentials: the same credentials would be refused again.
        """
        writer = asyncio.create_task(self._write_forever(), name="mqtt-bridge-writer")
        try:
            await mqttlink.keep_connected(
                self._session,
                backoff=self._backoff,
                retry=lambda exc: not isinstance(exc, mqttlink.CredentialsRefusedError),
                on_retry=self._log_retry,
            )
        except mqttlink.CredentialsRefusedError as exc:
            user = self._session_settings.username
            raise BrokerAuthError(
                f"the MQTT broker refused the controller's credentials (username {user!r}; "
                f"set mqtt_username and mqtt_password): {exc}"
            ) from exc
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await self._final_flush()

    def _log_retry(self, exc: Exception, delay_s: float) -> None:
        if isinstance(exc, mqttlink.MqttLinkError | BridgeError | OSError):
            reason = str(exc) or type(exc).__name__
        else:
            logger.error("MQTT bridge session failed", exc_info=exc)
            reason = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "MQTT bridge down (%s); retrying %s in %.2f s", reason, self._nodes.current, delay_s
        )

    # -- one connection ------------------------------------------------------------------

    async def _session(self) -> None:
        # Decode in the message callback and acknowledge ourselves, once the report is
        # queued: no per-message object, task and queue hop of aiomqtt's iterator (a third
        # of the ingest rate), and the acknowledgements give back-pressure.
        node = self._nodes.current
        connection = mqttlink.MqttConnection(
            replace(self._session_settings, host=node.host, port=node.port),
            fast_ingest=mqttlink.FastIngest(self._on_message),
        )
        # Acknowledgements owed on a dead connection are void (they release nothing);
        # those of this one count from its first message, which may arrive before
        # connect() returns.
        self._owed_acks.clear()
        try:
            await connection.connect()
        except mqttlink.TransportError:
            self._nodes.connect_failed()
            raise
        self._backoff.connected()
        announce: asyncio.Task[None] | None = None
        try:
            refused = await connection.subscribe(self._subscriptions)
            for topic_filter, reason in refused.items():
                logger.error("the broker refused the subscription to %s (%s)", topic_filter, reason)
            self._connection, self._connected = connection, True
            self.metrics.connected.set(1)
            self.metrics.connects.inc()
            logger.info("MQTT bridge connected to %s", node)
            if self._on_connected is not None:
                announce = asyncio.create_task(self._announce(), name="mqtt-bridge-connected")
            # Reports arrive through the message callback; this only waits for the
            # connection to end.
            await connection.wait_lost()
        finally:
            self._connected, self._connection = False, None
            self.metrics.connected.set(0)
            if announce is not None:
                announce.cancel()
            await self._disconnect(connection)

    async def _announce(self) -> None:
        assert self._on_connected is not None
        try:
            await self._on_connected()
        except Exception:
            logger.exception("on_connected failed; the bridge carries on")

    async def _disconnect(self, connection: mqttlink.MqttConnection) -> None:
        try:
            await connection.disconnect()
        except mqttlink.MqttLinkError as exc:
            logger.debug("MQTT bridge did not disconnect cleanly: %s", exc)
            connection.drop()

    # -- receiving (on the event loop's thread: mqttlink's fast ingest mode) --------------

    def _on_message(self, topic: str, payload: bytes, ack: mqttlink.Ack | None) -> None:
        try:
            self._accept(topic, payload)
        except Exception:
            logger.exception("a message could not be handled; dropping it")
        if ack is not None:
            if self._owed_acks or len(self._queue) >= self._queue_limit:
                self._owed_acks.append(ack)
                self.metrics.held_acks.inc()
            else:
                ack.release()

    def _accept(self, topic: str, payload: bytes | bytearray) -> None:
        queue, received_s = self._queue, time.time()
        was_empty = not queue
        queue.extend((received_s, report) for report in self._decoded(topic, payload))
        if (was_empty and queue) or len(queue) >= self._batch_size:
            self._wakeup.set()

    def _decoded(self, topic: str, payload: bytes | bytearray) -> list[QueuedReport]:
        """What one message holds to store (telemetry as rows), counted; [] if dropped."""
        report = decode_report(self._settings.topic_prefix, topic, payload)
        if isinstance(report, Dropped):
            self._dropped(report)
            return []
        self.metrics.received[_CHANNEL_OF[type(report)]].inc()
        if isinstance(report, TelemetryBatch):
            return list(telemetry_rows((report,)))
        return [report]

    async def store(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Decode and write ``(topic, payload)`` messages read elsewhere (JetStream), and
        return once they are written: the caller acknowledges them then. Retries like the
        writer; a message the database refuses is logged and dropped, as there."""
        received_s = time.time()
        batch = [
            (received_s, report)
            for topic, payload in messages
            for report in self._decoded(topic, payload)
        ]
        for start in range(0, len(batch), self._batch_size):
            await self._write_with_retry(batch[start : start + self._batch_size])

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
            self._owed_acks.popleft().release()

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
                async with asyncio.timeout(left_s):
                    await self._wakeup.wait()
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
                delay_s = backoff_delay_s(
                    attempt, initial_s=BACKOFF_INITIAL_S, max_s=BACKOFF_MAX_S, rng=self._rng
                )
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
                async with asyncio.timeout(FINAL_FLUSH_TIMEOUT_S):
                    written = await asyncio.to_thread(self._write, chunk)
                self.metrics.count_written(written)
        except Exception:
            logger.exception("could not write %d reports before stopping", len(left))
