"""Every reach into a private attribute of amqtt, in one place.

The embedded broker corrects amqtt 0.12 behaviours (``embedded_broker``) through amqtt's
private names. ``CompatBroker`` maps them to hooks of ours, so that ``EmbeddedBroker``
uses no private name of amqtt.

One correction lives here whole, because it replaces a private method: amqtt's
``_initialize_client_session`` changes the session table *before* the login is checked.
A CONNECT with a wrong password and the clean-session flag deleted the session (and every
subscription) of the client id it named, the controller's included; without the flag it
overwrote that session's credentials and will. Here the CONNECT is read within
``connect_timeout_s``, the login is checked first, and a refused client gets its CONNACK
and is closed without touching any session. ``REQUIRED`` lists each name with its
use; ``tests/controller/mqtt/test_amqtt_compat.py`` fails, naming the attribute, when an
amqtt release drops one. Check them before raising amqtt's upper bound in
``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Any

from amqtt.broker import Broker
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.utils import gen_client_id

__all__ = ["REQUIRED", "CompatBroker", "missing_attributes"]

REQUIRED: dict[str, str] = {
    "_subscriptions": "the broker's table of topic filter -> [(session, qos)]",
    "_publish_retained_messages_for_subscription": (
        "the coroutine (subscription, session) that offers a session the retained messages "
        "of one of its filters when it reconnects"
    ),
    "_initialize_client_session": (
        "the coroutine (reader, writer, remote_address, remote_port) -> (handler, session) "
        "that reads the CONNECT and finds or replaces the client's session"
    ),
    "_authenticate": "the coroutine (session, listener) -> bool asking the auth plugins",
    "_sessions": "the broker's table of client id -> (session, handler)",
    "_delete_session": "the coroutine (client_id) that drops a session and its subscriptions",
}

# What a CONNECT of a known client id carries over into that client's stored session.
_CARRIED_OVER = (
    *("will_flag", "will_message", "will_topic", "will_qos"),
    *("keep_alive", "username", "password"),
)


class CompatBroker(Broker):  # type: ignore[misc]
    """amqtt's ``Broker`` with its private hooks under names of ours."""

    # A client that has not sent its CONNECT within this long is closed.
    connect_timeout_s: float = 10.0

    def __init__(self, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        # amqtt has no type information; set through setattr to keep mypy out of it.
        table = self.wrap_subscriptions(getattr(self, "_subscriptions"))  # noqa: B009
        setattr(self, "_subscriptions", table)  # noqa: B010

    def wrap_subscriptions(self, table: dict[str, Any]) -> dict[str, Any]:
        """The subscriptions table to use instead of ``table`` (amqtt's, empty)."""
        return table

    def subscription_holders(self, topic_filter: str) -> list[tuple[Any, int]]:
        """The ``(session, qos)`` pairs subscribed to ``topic_filter``."""
        holders: list[tuple[Any, int]] = getattr(self, "_subscriptions").get(topic_filter, [])  # noqa: B009
        return holders

    def offers_retained_messages(self, topic_filter: str, session: Any) -> bool:
        """Whether a reconnecting ``session`` is offered the retained messages that match
        ``topic_filter`` (amqtt: always)."""
        return True

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        if self.offers_retained_messages(subscription[0], session):
            await super()._publish_retained_messages_for_subscription(subscription, session)

    def client_ids(self) -> list[str]:
        """The client ids the broker holds a session for."""
        return list(getattr(self, "_sessions"))  # noqa: B009

    async def end_session(self, client_id: str) -> bool:
        """Close ``client_id``'s connection (as if it dropped) and forget its session and
        subscriptions; False when there is none."""
        entry = getattr(self, "_sessions").get(client_id)  # noqa: B009
        if entry is None:
            return False
        await entry[1].handle_connection_closed()
        await self._delete_session(client_id)
        return True

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Any]:
        peer = f"{remote_address}:{remote_port}"
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                handler, session = await BrokerProtocolHandler.init_from_connect(
                    reader, writer, self.plugins_manager
                )
        except (TimeoutError, AMQTTError, MQTTError, NoDataError) as exc:
            await _close_quietly(writer)
            what = "no CONNECT" if isinstance(exc, TimeoutError) else f"a bad CONNECT: {exc!r}"
            raise AMQTTError(f"{peer} sent {what}") from exc
        session.parent = 0
        if not await self._authenticate(session, None):
            handler.attach(session, reader, writer)
            await handler.mqtt_connack_authorize(False)
            await _close_quietly(writer)
            raise AMQTTError(f"{peer} was refused the login as {session.username!r}")
        # From here on as amqtt does, now that the client proved who it is.
        sessions: dict[str, tuple[Any, Any]] = getattr(self, "_sessions")  # noqa: B009
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
        elif session.client_id in sessions:
            stored = sessions[session.client_id][0]
            for name in _CARRIED_OVER:
                setattr(stored, name, getattr(session, name))
            session, session.parent = stored, 1
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session


async def missing_attributes() -> list[str]:
    """The names of ``REQUIRED`` this amqtt lacks, or lacks in the expected shape.

    A coroutine: amqtt's broker can only be made inside a running event loop (it is made,
    never started).
    """
    probe = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:0"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {}},
        }
    )
    missing = []
    if not isinstance(getattr(probe, "_subscriptions", None), dict):
        missing.append("_subscriptions (a dict)")
    method = getattr(Broker, "_publish_retained_messages_for_subscription", None)
    if method is None or not inspect.iscoroutinefunction(method):
        missing.append("_publish_retained_messages_for_subscription (a coroutine function)")
    elif list(inspect.signature(method).parameters) != ["self", "subscription", "session"]:
        missing.append("_publish_retained_messages_for_subscription(subscription, session)")
    if not isinstance(getattr(probe, "_sessions", None), dict):
        missing.append("_sessions (a dict)")
    expected = {
        "_initialize_client_session": ["self", "reader", "writer", "remote_address", "remote_port"],
        "_authenticate": ["self", "session", "_"],
        "_delete_session": ["self", "client_id"],
    }
    for name, parameters in expected.items():
        method = getattr(Broker, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            missing.append(f"{name} (a coroutine function)")
        elif list(inspect.signature(method).parameters) != parameters:
            missing.append(f"{name}({', '.join(parameters[1:])})")
    return missing


async def _close_quietly(writer: Any) -> None:
    """Close a refused client's connection; one that has gone already (a reset, as a TLS
    client that read its refusal and dropped the socket sends) is not an error."""
    with contextlib.suppress(ConnectionError):
        await writer.close()
