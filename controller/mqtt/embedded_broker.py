"""The embedded MQTT broker: amqtt, with its 0.12 behaviours corrected and bounded.

Imported only when the controller runs its own broker (amqtt is heavy to import). The
corrections use amqtt's private names only through ``_amqtt_compat``.

1. When a client with a persistent session reconnects, amqtt offers it the retained
   messages of *every* topic filter any client has subscribed to, not only its own, and
   without the ACL check. A device that lost its connection then received every other
   device's retained desired state and reported state: a leak across devices, and a
   flood the agent has to refuse message by message. ``EmbeddedBroker`` offers a client
   only the retained messages of the filters it holds itself.
2. amqtt iterates its subscriptions dict across ``await``s (the ACL check, retained
   deliveries); a client subscribing meanwhile raised "dictionary changed size during
   iteration", which killed that broadcast and dropped the message for the remaining
   subscribers. The dict now iterates over a copy of itself.
3. amqtt changed the session table before checking the login, so anyone on the network
   could drop the controller's subscriptions or cut a device off with a wrong password
   (``_amqtt_compat``): the login is now checked first.
4. Nothing bounded a connection: a socket that never sent CONNECT was kept forever, and at
   the descriptor limit every accept logged a traceback; a client could send a packet of
   up to 256 MiB, read whole into memory. Now a CONNECT must come within
   ``BrokerLimits.connect_timeout_s``, connections past ``max_connections`` are closed at
   once, and a packet over ``max_packet_bytes`` closes its connection before it is read.
5. A decommissioned device stayed connected: amqtt checks a login only when it is made.
   Every ``revocation_check_s`` the broker asks ``revoked_clients`` which of its clients
   lost their right to connect, and ends their sessions (their next login is refused).

Invariant: a client that has not logged in changes nothing but its own socket.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter

from ._amqtt_compat import CompatBroker

__all__ = [
    "DEFAULT_LIMITS",
    "BrokerLimits",
    "EmbeddedBroker",
    "PacketTooLargeError",
    "RevokedClients",
]

logger = logging.getLogger(__name__)

# Descriptors kept back from the connection cap for the database, HTTP and files.
_RESERVED_DESCRIPTORS = 256


# Which of these client ids may no longer connect; called in a worker thread.
RevokedClients = Callable[[Collection[str]], Collection[str]]


@dataclass(frozen=True)
class BrokerLimits:
    connect_timeout_s: float = 10.0
    max_connections: int = 10_000
    # Desired states of 16 models stay far below it (bench/desired_state_size.py).
    max_packet_bytes: int = 1024 * 1024
    revocation_check_s: float = 5.0


DEFAULT_LIMITS = BrokerLimits()


class PacketTooLargeError(Exception):
    """A client announced a packet over the broker's maximum; its connection is closed."""


class _CappedReader(StreamReaderAdapter):  # type: ignore[misc]
    """Refuses to read any piece of a packet larger than the broker's maximum.

    amqtt reads a packet's payload in one ``read(n)`` sized by the length its header
    claims, so refusing that read refuses the packet before a byte of it is buffered.
    The error ends amqtt's reader loop, which closes the connection.
    """

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int) -> None:
        super().__init__(reader)
        self._max_bytes = max_bytes

    async def read(self, n: int = -1) -> bytes:
        if n > self._max_bytes:
            raise PacketTooLargeError(f"a packet of {n} bytes, over {self._max_bytes}")
        data: bytes = await super().read(n)
        return data


class _SnapshotDict(dict[str, Any]):
    """A dict that iterates over a copy of itself, safe across ``await``s."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> Any:
        return list(super().items())


class EmbeddedBroker(CompatBroker):
    def __init__(
        self,
        config: dict[str, Any],
        *,
        limits: BrokerLimits = DEFAULT_LIMITS,
        revoked_clients: RevokedClients | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self.limits = limits
        self._revoked_clients = revoked_clients
        self._sweeper: asyncio.Task[None] | None = None
        self.connect_timeout_s = limits.connect_timeout_s
        soft_limit, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft_limit != resource.RLIM_INFINITY:
            usable = max(1, soft_limit - _RESERVED_DESCRIPTORS)
            if usable < limits.max_connections:
                logger.warning(
                    "the embedded broker takes %d connections, not %d: the process may open "
                    "%d files (raise it with ulimit -n)",
                    usable,
                    limits.max_connections,
                    soft_limit,
                )
            self._max_connections = min(limits.max_connections, usable)
        else:
            self._max_connections = limits.max_connections
        self._open_connections = 0

    async def start(self) -> None:
        await super().start()
        if self._revoked_clients is not None:
            self._sweeper = asyncio.create_task(self._end_revoked_sessions())

    async def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await super().shutdown()

    async def _end_revoked_sessions(self) -> None:
        assert self._revoked_clients is not None
        while True:
            await asyncio.sleep(self.limits.revocation_check_s)
            try:
                clients = self.client_ids()
                revoked = await asyncio.to_thread(self._revoked_clients, clients) if clients else ()
                for client_id in revoked:
                    if await self.end_session(client_id):
                        logger.info(
                            "ended the MQTT session of %s: it may no longer connect", client_id
                        )
            except Exception:
                # The next round tries again; the broker itself must keep serving.
                logger.exception("the embedded broker could not check for revoked clients")

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        if self._open_connections >= self._max_connections:
            # Closed at once, not queued: a queued socket still holds a descriptor.
            writer.close()
            return
        self._open_connections += 1
        try:
            await self.external_connected(
                _CappedReader(reader, self.limits.max_packet_bytes),
                StreamWriterAdapter(writer),
                listener_name,
            )
        finally:
            self._open_connections -= 1

    def wrap_subscriptions(self, table: dict[str, Any]) -> dict[str, Any]:
        return _SnapshotDict(table)

    def offers_retained_messages(self, topic_filter: str, session: Any) -> bool:
        holders = self.subscription_holders(topic_filter)
        return any(holder.client_id == session.client_id for holder, _ in holders)
