"""The device's MQTT link: one adapter over aiomqtt (and paho beneath it), hiding both.

Invariants:
- everything the device publishes goes through the on-disk ``Outbox``, in order; a
  message leaves the outbox only after the broker's PUBACK, so nothing is lost while the
  broker is unreachable or the process restarts (MQTT stays at-least-once: handlers on
  the other side are idempotent on ``(device, seq)``);
- MQTT 3.1.1 with ``clean_session=False`` (a persistent session, which Mosquitto and
  amqtt both keep), yet every connect re-publishes the retained birth and re-subscribes
  from the link's own table: a broker that restarted without persistence forgot both;
- the retained will is registered at every connect, so a crash or a cut connection
  reports the device offline; a clean stop publishes the will itself, then disconnects;
- every acknowledgement (CONNACK, SUBACK, PUBACK) has a timeout; every timeout is a
  ``TransportTimeoutError``, every other network failure a ``ConnectionFailedError``,
  and both are retried with exponential backoff and full jitter, reset only by a
  connection that held for ``backoff_max_s``;
- refused credentials raise ``BrokerAuthError`` out of ``run()`` at once: retrying the
  same credentials cannot help and looks like an attack to the broker;
- an ``on_message`` callback that raises is logged and never stops the link.

aiomqtt's paho callbacks only resolve futures and enqueue messages; the link's own work
happens in three tasks per connection: the drainer, the receiver and the stop watcher.
Each connection uses a fresh client, so no half-sent paho state leaks into the next one:
the outbox is the only source of retransmission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.reasoncodes import ReasonCode

from protocol import backoff_delay_s

from ..errors import (
    BrokerAuthError,
    ConfigurationError,
    ConnectionFailedError,
    TransportError,
    TransportTimeoutError,
)
from ..tls import default_tls_context
from .outbox import OutboxQueue

__all__ = ["LinkSettings", "Message", "MessageHandler", "MqttLink"]

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], Awaitable[None]]
_T = TypeVar("_T")

MAX_TOPIC_BYTES = 65_535
DRAIN_BATCH_MESSAGES = 100
# CONNACK return codes (3.1.1 numbers, and paho's MQTT 5 reason codes for them).
_AUTH_REFUSALS = frozenset({4, 5, 134, 135})
_CONFIG_REFUSALS = frozenset({1, 2, 132, 133})


@dataclass(frozen=True)
class LinkSettings:
    """Where and how to reach the broker. The password never appears in ``repr``."""

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 30
    tls: bool = False
    connect_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.host or any(char.isspace() for char in self.host):
            raise ConfigurationError(f"broker host {self.host!r} is empty or has spaces")
        if not 1 <= self.port <= 65_535:
            raise ConfigurationError(f"broker port {self.port} is not in 1-65535")
        # A persistent session is keyed by the client id: it must be ours and stable.
        if not self.client_id or not 1 <= len(self.client_id.encode()) <= 65_535:
            raise ConfigurationError("client_id must be 1-65535 bytes of UTF-8")
        if "\x00" in self.client_id:
            raise ConfigurationError("client_id must not contain NUL")
        if self.password is not None and self.username is None:
            raise ConfigurationError("MQTT 3.1.1 allows a password only with a username")
        if not 1 <= self.keepalive_s <= 65_535:
            raise ConfigurationError(f"keepalive_s {self.keepalive_s} is not in 1-65535")
        for name in ("connect_timeout_s", "ack_timeout_s", "backoff_initial_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{name} must be a positive number, not {value}")
        if not (math.isfinite(self.backoff_max_s) and self.backoff_max_s >= self.backoff_initial_s):
            raise ConfigurationError("backoff_max_s must be finite and >= backoff_initial_s")


@dataclass(frozen=True)
class Message:
    """One message to publish. QoS 2 is refused: the outbox gives at-least-once, and
    exactly-once would need packet ids kept across connections, which a fresh client per
    connection does not keep."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False

    def __post_init__(self) -> None:
        _verify_topic_name(self.topic)
        if not isinstance(self.payload, bytes):
            raise ConfigurationError(f"payload for {self.topic} must be bytes")
        if self.qos not in (0, 1):
            raise ConfigurationError(f"qos {self.qos} for {self.topic} is not 0 or 1")


class MqttLink:
    """Keeps the device connected; publishes through the outbox; delivers what arrives."""

    def __init__(
        self,
        settings: LinkSettings,
        *,
        outbox: OutboxQueue,
        will: Message,
        birth: Message,
        subscriptions: Sequence[tuple[str, int]],
        rng: random.Random | None = None,
    ) -> None:
        for role, message in (("will", will), ("birth", birth)):
            if not message.retain:
                raise ConfigurationError(f"the {role} message must be retained")
        for topic_filter, qos in subscriptions:
            _verify_topic_filter(topic_filter)
            if qos not in (0, 1, 2):
                raise ConfigurationError(f"subscription qos {qos} is not 0, 1 or 2")
        self._settings = settings
        self._outbox = outbox
        self._will = will
        self._birth = birth
        self._subscriptions = tuple(subscriptions)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._wakeup = asyncio.Event()
        self._connected = False
        self._connected_at: float | None = None
        # Loading CA certificates reads the disk: once per process, not per reconnect.
        self._tls_context = default_tls_context() if settings.tls else None

    @property
    def connected(self) -> bool:
        """True while the broker has accepted the connection and it has not been lost."""
        return self._connected

    def publish(self, message: Message) -> None:
        """Queue ``message`` in the outbox and wake the drainer; call it from the thread of
        the event loop that runs ``run()``.

        Returns at once, online or not; raises ``OutboxError`` if the outbox cannot take it.
        """
        self._outbox.put(message.topic, message.payload, qos=message.qos, retain=message.retain)
        self._wakeup.set()

    @property
    def birth(self) -> Message:
        """The retained message published on every connect: keep it the latest state,
        or a reconnect would report an old one."""
        return self._birth

    @birth.setter
    def birth(self, message: Message) -> None:
        if not message.retain:
            raise ConfigurationError("the birth message must be retained")
        self._birth = message

    async def run(self, on_message: MessageHandler, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set; return after a clean disconnect.

        Raises ``BrokerAuthError`` (or another ``ConfigurationError``) when the broker
        refuses the connection for a reason retrying cannot fix, and ``OutboxError`` when
        the outbox fails. Transport errors are retried, never raised.
        """
        failures = 0
        while not stop.is_set():
            try:
                await self._session(on_message, stop)
            except TransportError as exc:
                # Only a connection that held resets the backoff: one the broker drops at
                # once (say, another client with our id) must not become a tight loop.
                if self._held_connection():
                    failures = 0
                delay_s = backoff_delay_s(
                    failures,
                    initial_s=self._settings.backoff_initial_s,
                    max_s=self._settings.backoff_max_s,
                    rng=self._rng,
                )
                failures += 1
                logger.warning(
                    "MQTT link to %s:%d down (%s: %s); retrying in %.2f s",
                    self._settings.host,
                    self._settings.port,
                    exc.reason,
                    exc,
                    delay_s,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay_s):
                        await stop.wait()
            else:
                return

    def _held_connection(self) -> bool:
        connected_at = self._connected_at
        held_s = self._settings.backoff_max_s
        return connected_at is not None and time.monotonic() - connected_at >= held_s

    # -- one connection ------------------------------------------------------------------

    async def _session(self, on_message: MessageHandler, stop: asyncio.Event) -> None:
        """Connect, serve until stop (then disconnect cleanly) or until the link fails."""
        self._connected_at = None
        client = self._new_client()
        if not await self._connect_unless_stopped(client, stop):
            return
        self._connected_at = time.monotonic()
        self._connected = True
        logger.info("MQTT link connected to %s:%d", self._settings.host, self._settings.port)
        try:
            await self._publish_acked(client, self._birth)
            await self._subscribe(client)
            await self._serve(client, on_message, stop)
        except BaseException:
            self._connected = False
            # Cut without DISCONNECT, so the broker publishes the will: the truth.
            _drop_connection(client)
            raise
        self._connected = False
        await self._disconnect_cleanly(client)

    def _new_client(self) -> aiomqtt.Client:
        settings = self._settings
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            identifier=settings.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
            will=aiomqtt.Will(
                self._will.topic, self._will.payload, qos=self._will.qos, retain=True
            ),
            keepalive=settings.keepalive_s,
            timeout=settings.connect_timeout_s,
            tls_context=self._tls_context,
        )
        # paho's TCP connect timeout (5 s by default); aiomqtt's timeout covers CONNACK.
        client._client.connect_timeout = settings.connect_timeout_s
        return client

    async def _connect_unless_stopped(self, client: aiomqtt.Client, stop: asyncio.Event) -> bool:
        """Connect; False if ``stop`` was set first (a CONNACK can take connect_timeout_s)."""
        connecting = asyncio.create_task(self._connect(client), name="mqtt-connect")
        stopping = asyncio.create_task(stop.wait(), name="mqtt-stop")
        try:
            await asyncio.wait((connecting, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not connecting.done():
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
                # Stopped (or cancelled) halfway: cut whatever socket paho has opened.
                # One it opens later, from its connect thread, dies with the process.
                _drop_connection(client)
        if connecting.cancelled():
            return False
        connecting.result()
        return True

    async def _connect(self, client: aiomqtt.Client) -> None:
        where = f"{self._settings.host}:{self._settings.port}"
        try:
            await client.__aenter__()
        except MqttConnectError as exc:
            code = _connack_code(exc)
            if code in _AUTH_REFUSALS:
                raise BrokerAuthError(
                    f"broker {where} refused the credentials of client "
                    f"{self._settings.client_id!r}: {exc}"
                ) from exc
            if code in _CONFIG_REFUSALS:
                raise ConfigurationError(f"broker {where} refused the connection: {exc}") from exc
            raise ConnectionFailedError(f"broker {where} refused the connection: {exc}") from exc
        except aiomqtt.MqttError as exc:
            _drop_connection(client)
            # aiomqtt keeps no type for timeouts: "timed out" is the TCP connect's or
            # the CONNACK wait's message. Both errors are retried alike anyway.
            if "timed out" in str(exc):
                raise TransportTimeoutError(f"no connection to {where}: {exc}") from exc
            raise ConnectionFailedError(f"cannot connect to {where}: {exc}") from exc

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        if not self._subscriptions:
            return
        topics = list(self._subscriptions)
        codes: Sequence[int | ReasonCode] = await self._acked(
            client.subscribe(topics, timeout=math.inf), what="SUBACK for the subscriptions"
        )
        for (topic_filter, _qos), code in zip(topics, codes, strict=False):
            if _is_failure(code):
                # Retrying cannot change the broker's ACL; the rest of the link still works.
                logger.error("broker refused the subscription to %s (%s)", topic_filter, code)

    async def _serve(
        self, client: aiomqtt.Client, on_message: MessageHandler, stop: asyncio.Event
    ) -> None:
        """Return when ``stop`` is set; raise when draining or receiving fails."""
        drainer = asyncio.create_task(self._drain(client), name="mqtt-drain")
        receiver = asyncio.create_task(self._receive(client, on_message), name="mqtt-receive")
        stopper = asyncio.create_task(stop.wait(), name="mqtt-stop")
        tasks = (drainer, receiver, stopper)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        if stopper.done() and not stopper.cancelled():
            return
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        raise ConnectionFailedError("the MQTT link stopped serving without an error")

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Publish the outbox in order, forever; ack each message only after its PUBACK."""
        while True:
            # Clear before peeking: a put() after the peek sets the event again.
            self._wakeup.clear()
            batch = self._outbox.peek(DRAIN_BATCH_MESSAGES)
            if not batch:
                await self._wakeup.wait()
                continue
            for item in batch:
                message = Message(item.topic, item.payload, qos=item.qos, retain=item.retain)
                await self._publish_acked(client, message)
                self._outbox.ack(item.id)

    async def _receive(self, client: aiomqtt.Client, on_message: MessageHandler) -> None:
        try:
            async for message in client.messages:
                await _deliver(on_message, message)
        except aiomqtt.MqttError as exc:
            raise ConnectionFailedError(f"connection to the broker lost: {exc}") from exc
        raise ConnectionFailedError("the broker's message stream ended")

    async def _publish_acked(self, client: aiomqtt.Client, message: Message) -> None:
        await self._acked(
            client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                timeout=math.inf,
            ),
            what=f"PUBACK for {message.topic}",
        )

    async def _acked(self, call: Awaitable[_T], *, what: str) -> _T:
        timeout_s = self._settings.ack_timeout_s
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for can swallow a
        # cancellation that arrives as the acknowledgement does, and the drainer then
        # loops on, so run() never returned after stop (seen once under load in CI).
        try:
            async with asyncio.timeout(timeout_s):
                return await call
        except TimeoutError as exc:
            raise TransportTimeoutError(f"no {what} within {timeout_s} s") from exc
        except aiomqtt.MqttError as exc:
            raise ConnectionFailedError(f"no {what}: {exc}") from exc

    async def _disconnect_cleanly(self, client: aiomqtt.Client) -> None:
        """Say offline (the will is not sent after a DISCONNECT), then disconnect."""
        try:
            await self._publish_acked(client, self._will)
            async with asyncio.timeout(self._settings.connect_timeout_s):
                await client.__aexit__(None, None, None)
        except (TransportError, aiomqtt.MqttError, TimeoutError) as exc:
            logger.warning("MQTT link did not disconnect cleanly (%s); cutting it", exc)
            _drop_connection(client)
        else:
            logger.info("MQTT link disconnected")


async def _deliver(on_message: MessageHandler, message: aiomqtt.Message) -> None:
    topic = message.topic.value
    try:
        await on_message(topic, bytes(message.payload), bool(message.retain))
    except Exception:
        logger.exception("on_message failed for a message on %s; the link carries on", topic)


def _is_failure(code: int | ReasonCode) -> bool:
    return code.is_failure if isinstance(code, ReasonCode) else code >= 0x80


def _connack_code(exc: MqttConnectError) -> int | None:
    code = exc.rc
    if code is None:
        return None
    return int(code.value) if isinstance(code, ReasonCode) else int(code)


def _drop_connection(client: aiomqtt.Client) -> None:
    """Close the TCP connection without an MQTT DISCONNECT, so the broker publishes the
    will. The client is discarded afterwards.

    paho's own socket close is the one way to do it that also unregisters the socket from
    the event loop and fires no callback into an aiomqtt client that was cancelled
    halfway (its ``on_disconnect`` fails on a cancelled CONNACK future); neither library
    offers it publicly, hence the private calls, kept to this one place.
    """
    client._client._sock_close()


def _verify_topic_name(topic: str) -> None:
    if not topic or len(topic.encode()) > MAX_TOPIC_BYTES:
        raise ConfigurationError(f"topic {topic!r} must be 1-{MAX_TOPIC_BYTES} bytes of UTF-8")
    if any(char in topic for char in "+#\x00"):
        raise ConfigurationError(f"topic {topic!r} must not contain '+', '#' or NUL")


def _verify_topic_filter(topic_filter: str) -> None:
    if not topic_filter or len(topic_filter.encode()) > MAX_TOPIC_BYTES:
        raise ConfigurationError(f"topic filter {topic_filter!r} is empty or too long")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        misplaced_hash = "#" in level and (level != "#" or index != len(levels) - 1)
        if misplaced_hash or ("+" in level and level != "+") or "\x00" in level:
            raise ConfigurationError(f"topic filter {topic_filter!r} is not a valid filter")
