"""The fast ingest mode: messages go straight from paho to a synchronous callback, and the
caller releases each acknowledgement itself.

aiomqtt's way (a message object, a queue hop and a task wake-up per message) costs a third
of a busy subscriber's ingest rate (``docs/benchmarks.md``). In this mode:

- paho's message callback is ``FastIngest.on_message``, called on the event loop's thread
  (aiomqtt drives paho from there) with the topic, the payload and an ``Ack``, or ``None``
  for QoS 0; it must not block, and should only decode and enqueue;
- paho sends no PUBACK by itself: the caller calls ``Ack.release()`` once the message is
  safe with it. Holding acknowledgements is back-pressure: the broker stops sending after
  its in-flight window. Release them in arrival order (MQTT 3.1.1 §4.6, MQTT 5 §4.6);
- an ``Ack`` of a connection that has since closed releases nothing: the broker resends
  that message on the next connection of a persistent session;
- a callback that raises is logged, its acknowledgement released (the message is
  dropped, as a message that cannot be handled should be), and the connection goes on;
- a plain TCP socket is read through ``BufferedSocket``: paho reads each packet with
  three or four ``recv`` calls (one byte of header, its length byte by byte, then the
  rest), which costs as much as the rest of its work.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Ack", "FastIngest", "IngestCallback"]

logger = logging.getLogger(__name__)

SOCKET_READ_BYTES = 256 * 1024


class _AckSender(Protocol):
    def _send_ack(self, mid: int, qos: int) -> None: ...


class Ack:
    """The acknowledgement of one QoS 1 or 2 message, sent when the caller releases it."""

    __slots__ = ("_connection", "_mid", "_qos", "_released")

    def __init__(self, connection: _AckSender, mid: int, qos: int) -> None:
        self._connection = connection
        self._mid = mid
        self._qos = qos
        self._released = False

    def release(self) -> None:
        """Send the acknowledgement (once; later calls do nothing). Call it on the event
        loop's thread. Does nothing if the connection has closed since."""
        if not self._released:
            self._released = True
            self._connection._send_ack(self._mid, self._qos)


IngestCallback = Callable[[str, bytes, Ack | None], None]


@dataclass(frozen=True)
class FastIngest:
    """Selects the fast ingest mode for an ``MqttConnection``; see the module docstring."""

    on_message: IngestCallback


class BufferedSocket:
    """A plain socket read in large chunks. ``pending()`` is what aiomqtt's reader asks of
    TLS sockets, so it keeps reading while bytes wait here.

    Swapped in between two callbacks of the event loop, right after the CONNACK, so
    nothing paho has read or not read is lost: the buffer starts empty.
    """

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
