"""The device's MQTT link, on ``mqttlink`` (the one adapter over aiomqtt and paho).

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
- every acknowledgement (CONNACK, SUBACK, PUBACK) has a timeout (``mqttlink``, under
  ``asyncio.timeout``); every timeout is a ``TransportTimeoutError``, every other network
  failure a ``ConnectionFailedError``, and both are retried with exponential backoff and
  full jitter, reset only by a connection that held for ``backoff_max_s``;
- refused credentials raise ``BrokerAuthError`` out of ``run()`` at once: retrying the
  same credentials cannot help and looks like an attack to the broker;
- an ``on_message`` callback that raises is logged and never stops the link;
- with several broker nodes (a cluster: ``LinkSettings.other_nodes``) the link starts on
  one chosen by its client id (a fleet spreads over the nodes), stays on the node that
  works and moves to the next after a failed connect, so the devices of a
  node that dies reconnect to the others; its session, will and subscriptions follow,
  since every connect registers and sends them again.

mqttlink's errors become the agent's here, once (``translate_mqtt_error``). The link's
own work happens in three tasks per connection: the drainer, the receiver and the stop
watcher. Each connection is a fresh ``MqttConnection``, so no half-sent paho state leaks
into the next one: the outbox is the only source of retransmission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import mqttlink
from mqttlink import MqttConnection, ReceivedMessage

from ..errors import (
    AgentError,
    BrokerAuthError,
    ConfigurationError,
    ConnectionFailedError,
    TransportError,
    TransportTimeoutError,
)
from ..tls import default_tls_context
from .outbox import OutboxQueue

__all__ = ["LinkSettings", "Message", "MessageHandler", "MqttLink", "translate_mqtt_error"]

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], Awaitable[None]]

DRAIN_BATCH_MESSAGES = 100

# Most specific first: the first matching mqttlink class wins.
_TRANSLATIONS: tuple[tuple[type[mqttlink.MqttLinkError], type[AgentError]], ...] = (
    (mqttlink.CredentialsRefusedError, BrokerAuthError),
    (mqttlink.RefusedError, ConfigurationError),
    (mqttlink.SettingsError, ConfigurationError),
    (mqttlink.LinkTimeoutError, TransportTimeoutError),
    (mqttlink.TransportError, ConnectionFailedError),
)


def translate_mqtt_error(exc: mqttlink.MqttLinkError) -> AgentError:
    """The agent error for an mqttlink error; raise it ``from exc``."""
    for mqtt_type, agent_type in _TRANSLATIONS:
        if isinstance(exc, mqtt_type):
            return agent_type(str(exc))
    return AgentError(str(exc))


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except mqttlink.MqttLinkError as exc:
        raise translate_mqtt_error(exc) from exc


@dataclass(frozen=True)
class LinkSettings:
    """Where and how to reach the broker. The password never appears in ``repr``.

    Validated as ``mqttlink.SessionSettings``; a bad value is a ``ConfigurationError``.
    """

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 30
    tls: bool = False
    # With ``tls``: the context to use (the device's pinned CA and certificate,
    # ``agent.tls.device_tls_context``); None: the system's CAs.
    tls_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    connect_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    # The other nodes of a broker cluster, tried in order after ``host:port`` fails.
    other_nodes: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        self.session_settings(tls_context=None)
        for host, port in self.other_nodes:
            replace(self, host=host, port=port, other_nodes=()).session_settings(tls_context=None)

    @property
    def nodes(self) -> tuple[mqttlink.BrokerAddress, ...]:
        first = mqttlink.BrokerAddress(self.host, self.port, self.tls)
        others = (mqttlink.BrokerAddress(host, port, self.tls) for host, port in self.other_nodes)
        return (first, *others)

    def session_settings(self, *, tls_context: ssl.SSLContext | None) -> mqttlink.SessionSettings:
        """The device's session: MQTT 3.1.1, persistent (``clean_session=False``)."""
        with _translated():
            return mqttlink.SessionSettings(
                host=self.host,
                port=self.port,
                client_id=self.client_id,
                username=self.username,
                password=self.password,
                keepalive_s=self.keepalive_s,
                tls_context=tls_context,
                connect_timeout_s=self.connect_timeout_s,
                ack_timeout_s=self.ack_timeout_s,
                backoff_initial_s=self.backoff_initial_s,
                backoff_max_s=self.backoff_max_s,
                version=mqttlink.MqttVersion.V311,
                clean_session=False,
            )


@dataclass(frozen=True)
class Message(mqttlink.Message):
    """One message to publish. QoS 2 is refused: the outbox gives at-least-once, and
    exactly-once would need packet ids kept across connections, which a fresh client per
    connection does not keep."""

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except mqttlink.SettingsError as exc:
            raise translate_mqtt_error(exc) from exc
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
            with _translated():
                mqttlink.verify_topic_filter(topic_filter)
            if qos not in (0, 1, 2):
                raise ConfigurationError(f"subscription qos {qos} is not 0, 1 or 2")
        self._settings = settings
        self._nodes = mqttlink.BrokerAddresses(settings.nodes, spread_key=settings.client_id)
        # Loading CA certificates reads the disk: once per process, not per reconnect.
        self._session_settings = settings.session_settings(
            tls_context=(settings.tls_context or default_tls_context()) if settings.tls else None
        )
        self._outbox = outbox
        self._will = will
        self._birth = birth
        self._subscriptions = tuple(subscriptions)
        self._backoff = mqttlink.Backoff(
            initial_s=settings.backoff_initial_s, max_s=settings.backoff_max_s, rng=rng
        )
        self._wakeup = asyncio.Event()
        self._connected = False
        self._node_in_use = self._nodes.current

    def use_tls_context(self, context: ssl.SSLContext) -> None:
        """Connect with ``context`` from the next connection on (a renewed certificate)."""
        self._session_settings = self._settings.session_settings(tls_context=context)

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
        await mqttlink.keep_connected(
            lambda: self._session(on_message, stop),
            backoff=self._backoff,
            stop=stop,
            retry=lambda exc: isinstance(exc, TransportError),
            on_retry=self._log_retry,
        )

    def _log_retry(self, exc: Exception, delay_s: float) -> None:
        reason = exc.reason if isinstance(exc, AgentError) else type(exc).__name__
        logger.warning(
            "MQTT link to %s down (%s: %s); retrying in %.2f s (%s)",
            self._node_in_use,
            reason,
            exc,
            delay_s,
            self._nodes.current,
        )

    def _node_settings(self) -> mqttlink.SessionSettings:
        node = self._nodes.current
        return replace(self._session_settings, host=node.host, port=node.port)

    # -- one connection ------------------------------------------------------------------

    async def _session(self, on_message: MessageHandler, stop: asyncio.Event) -> None:
        """Connect, serve until stop (then disconnect cleanly) or until the link fails."""
        with _translated():
            self._node_in_use = self._nodes.current
            connection = MqttConnection(self._node_settings(), will=self._will)
            try:
                if not await self._connect_unless_stopped(connection, stop):
                    return
            except mqttlink.TransportError:
                self._nodes.connect_failed()
                raise
            self._backoff.connected()
            self._connected = True
            logger.info("MQTT link connected to %s", self._node_in_use)
            try:
                await connection.publish(self._birth)
                await self._subscribe(connection)
                await self._serve(connection, on_message, stop)
            except BaseException:
                self._connected = False
                # Cut without DISCONNECT, so the broker publishes the will: the truth.
                connection.drop()
                raise
            self._connected = False
            await self._disconnect_cleanly(connection)

    async def _connect_unless_stopped(
        self, connection: MqttConnection, stop: asyncio.Event
    ) -> bool:
        """Connect; False if ``stop`` was set first (a CONNACK can take connect_timeout_s)."""
        connecting = asyncio.create_task(connection.connect(), name="mqtt-connect")
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
                connection.drop()
        if connecting.cancelled():
            return False
        connecting.result()
        return True

    async def _subscribe(self, connection: MqttConnection) -> None:
        refused = await connection.subscribe(self._subscriptions)
        for topic_filter, reason in refused.items():
            # Retrying cannot change the broker's ACL; the rest of the link still works.
            logger.error("broker refused the subscription to %s (%s)", topic_filter, reason)

    async def _serve(
        self, connection: MqttConnection, on_message: MessageHandler, stop: asyncio.Event
    ) -> None:
        """Return when ``stop`` is set; raise when draining or receiving fails."""
        drainer = asyncio.create_task(self._drain(connection), name="mqtt-drain")
        receiver = asyncio.create_task(self._receive(connection, on_message), name="mqtt-receive")
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

    async def _drain(self, connection: MqttConnection) -> None:
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
                await connection.publish(message)
                self._outbox.ack(item.id)

    async def _receive(self, connection: MqttConnection, on_message: MessageHandler) -> None:
        async for message in connection.messages():
            await _deliver(on_message, message)
            del message  # held until the next message otherwise: KBs per idle device

    async def _disconnect_cleanly(self, connection: MqttConnection) -> None:
        """Say offline (the will is not sent after a DISCONNECT), then disconnect."""
        try:
            await connection.publish(self._will)
            await connection.disconnect()
        except mqttlink.TransportError as exc:
            logger.warning("MQTT link did not disconnect cleanly (%s); cutting it", exc)
            connection.drop()
        else:
            logger.info("MQTT link disconnected")


async def _deliver(on_message: MessageHandler, message: ReceivedMessage) -> None:
    try:
        await on_message(message.topic, message.payload, message.retain)
    except Exception:
        logger.exception(
            "on_message failed for a message on %s; the link carries on", message.topic
        )
