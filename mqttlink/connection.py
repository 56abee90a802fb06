"""One MQTT connection over aiomqtt (and paho beneath it), hiding both.

Invariants:
- one ``MqttConnection`` is one connection, on a fresh aiomqtt (and paho) client, so no
  half-sent paho state leaks into the next connection; ``connect()`` either leaves it
  open or cuts whatever it had opened;
- every wait for the broker has a timeout, under ``asyncio.timeout``, never
  ``asyncio.wait_for`` (on Python 3.11, ``wait_for`` can swallow a cancellation that
  arrives as the acknowledgement does, and a stopped caller then loops on). aiomqtt's
  own timeouts are off. The TCP (and TLS) connect is bounded by paho's socket timeout,
  then the CONNACK and a clean DISCONNECT by ``connect_timeout_s``, and each SUBACK and
  PUBACK by ``ack_timeout_s``;
- every failure leaves as an ``MqttLinkError``: a refusing CONNACK is classified
  (credentials, configuration, or anything else: connection failed), every timeout is a
  ``LinkTimeoutError``, every other network failure a ``ConnectionFailedError``;
- ``drop()`` cuts the TCP connection without DISCONNECT, so the broker publishes the
  will; ``disconnect()`` sends DISCONNECT, so it does not;
- with ``FastIngest`` (``ingest`` module), messages reach the caller's callback straight
  from paho and are acknowledged when the caller releases them; a callback that raises
  never reaches paho's read loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import _aiomqtt_compat, _paho_compat
from .errors import (
    ConfigurationRefusedError,
    ConnectionFailedError,
    CredentialsRefusedError,
    LinkTimeoutError,
    MqttLinkError,
    SettingsError,
)
from .ingest import Ack, BufferedSocket, FastIngest
from .settings import Message, MqttVersion, SessionSettings, verify_topic_filter

__all__ = ["MqttConnection", "ReceivedMessage", "wait_acknowledged"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# CONNACK return codes (3.1.1 numbers, and paho's MQTT 5 reason codes for them).
_CREDENTIALS_REFUSALS = frozenset({4, 5, 134, 135})
_CONFIGURATION_REFUSALS = frozenset({1, 2, 132, 133})


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class MqttConnection:
    """One connection to the broker: connect, subscribe, publish, receive, disconnect.

    Use it from the thread of the event loop that connected it.
    """

    def __init__(
        self,
        settings: SessionSettings,
        *,
        will: Message | None = None,
        fast_ingest: FastIngest | None = None,
    ) -> None:
        self._settings = settings
        self._will = will
        self._ingest = fast_ingest
        self._client: aiomqtt.Client | None = None
        self._paho: paho.Client | None = None
        self._connected = False  # the CONNACK accepted us
        self._closed = False  # disconnect() or drop() was called
        self.where = f"{settings.host}:{settings.port}"

    @property
    def is_open(self) -> bool:
        """True once the broker accepted the connection, until disconnect() or drop()."""
        return self._connected and not self._closed

    async def connect(self) -> None:
        """Connect and wait for the CONNACK; call once.

        Raises ``CredentialsRefusedError`` or ``ConfigurationRefusedError`` when the broker
        refuses what retrying cannot change, ``LinkTimeoutError`` when the connect or the
        CONNACK takes too long, ``ConnectionFailedError`` for anything else.
        """
        if self._client is not None:
            raise RuntimeError("an MqttConnection connects once; make a new one")
        client = self._client = self._new_client()
        try:
            await self._enter(client)
        except BaseException as exc:
            self.drop()
            error = _connect_error(exc, self._settings, self.where)
            if error is exc:
                raise
            raise error from exc
        self._connected = True
        if self._ingest is not None and self._paho is not None:
            _paho_compat.replace_socket(self._paho, BufferedSocket)

    async def subscribe(self, subscriptions: Sequence[tuple[str, int]]) -> dict[str, str]:
        """Subscribe to ``(topic filter, qos)`` pairs in one SUBSCRIBE; wait for the SUBACK.

        Returns the filters the broker refused, each with the broker's reason: retrying
        cannot change a broker's ACL, so the caller decides what to do with them.
        """
        for topic_filter, qos in subscriptions:
            verify_topic_filter(topic_filter)
            if qos not in (0, 1, 2):
                raise SettingsError(f"subscription qos {qos} is not 0, 1 or 2")
        if not subscriptions:
            return {}
        client = self._open_client()
        topics = list(subscriptions)
        codes: Sequence[int | ReasonCode] = await wait_acknowledged(
            client.subscribe(topics, timeout=math.inf),
            timeout_s=self._settings.ack_timeout_s,
            what="SUBACK for the subscriptions",
        )
        return {
            topic_filter: str(code)
            for (topic_filter, _qos), code in zip(topics, codes, strict=False)
            if _is_failure(code)
        }

    async def publish(self, message: Message) -> None:
        """Publish; at QoS 1 or 2, return once the broker acknowledged it."""
        client = self._open_client()
        await wait_acknowledged(
            client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                timeout=math.inf,
            ),
            timeout_s=self._settings.ack_timeout_s,
            what=f"PUBACK for {message.topic}",
        )

    async def messages(self) -> AsyncIterator[ReceivedMessage]:
        """What arrives, in order; raises ``ConnectionFailedError`` when the connection is
        lost. In the fast ingest mode nothing arrives here: use ``wait_lost()``."""
        client = self._open_client()
        try:
            async for message in client.messages:
                received = ReceivedMessage(
                    message.topic.value,
                    bytes(message.payload),
                    message.qos,
                    bool(message.retain),
                )
                # Hold nothing while waiting for the next one: a retained desired state is
                # several KB, times the agents of a simulator's process.
                del message
                yield received
                del received
        except aiomqtt.MqttError as exc:
            raise ConnectionFailedError(f"connection to the broker lost: {exc}") from exc
        raise ConnectionFailedError("the broker's message stream ended")

    async def wait_lost(self) -> NoReturn:
        """In the fast ingest mode: wait until the connection is lost, then raise
        ``ConnectionFailedError``."""
        if self._ingest is None:
            raise RuntimeError("wait_lost() is for the fast ingest mode; iterate messages()")
        async for _message in self.messages():  # pragma: no cover - never yields
            pass
        raise AssertionError("unreachable: messages() ends by raising")

    async def disconnect(self) -> None:
        """Send DISCONNECT (the broker then discards the will) and wait for the connection
        to close. Raises ``LinkTimeoutError`` or ``ConnectionFailedError``; ``drop()`` then
        cuts what is left."""
        client, self._closed = self._client, True
        if client is None or not self._connected:
            return
        timeout_s = self._settings.connect_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await client.__aexit__(None, None, None)
        except TimeoutError as exc:
            raise LinkTimeoutError(f"no clean disconnect within {timeout_s} s") from exc
        except (aiomqtt.MqttError, OSError) as exc:
            raise ConnectionFailedError(f"no clean disconnect: {exc}") from exc

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT, so the broker publishes the will.
        Safe at any time and more than once; the connection is unusable afterwards."""
        self._closed = True
        if self._paho is not None:
            _paho_compat.close_socket(self._paho)

    # -- the client ----------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        settings = self._settings
        v5 = settings.version is MqttVersion.V5
        properties = None
        if v5 and settings.session_expiry_s is not None:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.session_expiry_s
        will = self._will
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=settings.password,
            identifier=settings.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else settings.clean_session,
            clean_start=settings.clean_session if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            will=None
            if will is None
            else aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain),
            keepalive=settings.keepalive_s,
            timeout=math.inf,  # every wait is ours, under asyncio.timeout
            tls_context=settings.tls_context,
        )
        inner = self._paho = _aiomqtt_compat.paho_client(client)
        # paho's TCP (and TLS) connect timeout, 5 s by default.
        inner.connect_timeout = settings.connect_timeout_s
        if self._ingest is not None:
            inner.manual_ack_set(True)
            inner.on_message = self._on_paho_message
        return client

    async def _enter(self, client: aiomqtt.Client) -> None:
        """aiomqtt's connect, with the CONNACK clock started once the socket is open.

        The TCP connect runs in a thread that a timeout cannot stop; were it cut short
        here, the thread could still open a socket, with our client id, after the caller
        moved on. So paho's socket timeout bounds the connect, and ``connect_timeout_s``
        starts when paho reports the socket open.
        """
        assert self._paho is not None
        loop = asyncio.get_running_loop()
        timeout_s = self._settings.connect_timeout_s
        waiting = True
        async with asyncio.timeout(None) as deadline:

            def start_connack_clock() -> None:
                if waiting:
                    deadline.reschedule(loop.time() + timeout_s)

            aiomqtt_on_socket_open = self._paho.on_socket_open

            def on_socket_open(inner: paho.Client, userdata: Any, sock: Any) -> None:
                if aiomqtt_on_socket_open is not None:
                    aiomqtt_on_socket_open(inner, userdata, sock)
                loop.call_soon_threadsafe(start_connack_clock)  # paho calls from its thread

            self._paho.on_socket_open = on_socket_open
            try:
                await client.__aenter__()
            finally:
                waiting = False

    def _open_client(self) -> aiomqtt.Client:
        if self._client is None or not self.is_open:
            raise ConnectionFailedError(f"not connected to the broker at {self.where}")
        return self._client

    # -- the fast ingest mode (paho calls these on the event loop's thread) ---------------

    def _on_paho_message(self, _client: paho.Client, _userdata: Any, message: Any) -> None:
        assert self._ingest is not None
        ack = Ack(self, message.mid, message.qos) if message.qos > 0 else None
        try:
            self._ingest.on_message(message.topic, message.payload, ack)
        except Exception:
            # An exception here would reach paho's read loop and cut the connection.
            logger.exception("the message callback failed; dropping the message")
            if ack is not None:
                ack.release()

    def _send_ack(self, mid: int, qos: int) -> None:
        # Acknowledgements owed on a closed connection are void: the broker resends.
        if not self._closed and self._paho is not None:
            self._paho.ack(mid, qos)


async def wait_acknowledged(call: Awaitable[_T], *, timeout_s: float, what: str) -> _T:
    """Await ``call`` (an acknowledgement) for at most ``timeout_s``.

    ``asyncio.timeout``, not ``wait_for``: on Python 3.11, ``wait_for`` can swallow a
    cancellation that arrives as the acknowledgement does; a drainer then loops on, and
    its owner never returns after a stop (seen once under load in CI).
    """
    try:
        async with asyncio.timeout(timeout_s):
            return await call
    except TimeoutError as exc:
        raise LinkTimeoutError(f"no {what} within {timeout_s} s") from exc
    except aiomqtt.MqttError as exc:
        raise ConnectionFailedError(f"no {what}: {exc}") from exc


def _connect_error(exc: BaseException, settings: SessionSettings, where: str) -> BaseException:
    """The mqttlink error for a failed connect; cancellations and our own errors pass."""
    if isinstance(exc, MqttLinkError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, TimeoutError):
        return LinkTimeoutError(f"no CONNACK from {where} within {settings.connect_timeout_s} s")
    if isinstance(exc, MqttConnectError):
        code = _connack_code(exc)
        if code in _CREDENTIALS_REFUSALS:
            return CredentialsRefusedError(
                f"broker {where} refused the credentials of client {settings.client_id!r}: {exc}",
                code=code,
            )
        if code in _CONFIGURATION_REFUSALS:
            return ConfigurationRefusedError(
                f"broker {where} refused the connection: {exc}", code=code
            )
        return ConnectionFailedError(f"broker {where} refused the connection: {exc}")
    if isinstance(exc, aiomqtt.MqttError):
        # aiomqtt keeps no type for it: "timed out" is the TCP connect's message.
        if "timed out" in str(exc):
            return LinkTimeoutError(f"no connection to {where}: {exc}")
        return ConnectionFailedError(f"cannot connect to {where}: {exc}")
    return exc


def _connack_code(exc: MqttConnectError) -> int | None:
    code = exc.rc
    if code is None:
        return None
    return int(code.value) if isinstance(code, ReasonCode) else int(code)


def _is_failure(code: int | ReasonCode) -> bool:
    return code.is_failure if isinstance(code, ReasonCode) else code >= 0x80
