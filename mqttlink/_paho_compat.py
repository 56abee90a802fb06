"""Every reach into a private attribute of paho-mqtt, in one place.

paho offers no public way to cut a connection without a DISCONNECT, nor to read its
socket through a buffer. Each private name used here is listed in ``REQUIRED``, with what
it is for; ``tests/mqttlink/test_compat.py`` fails, naming the attribute, when a paho
release drops one. Check them before raising paho-mqtt's upper bound in
``pyproject.toml``.
"""

from __future__ import annotations

import socket
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["REQUIRED", "close_socket", "missing_attributes", "replace_socket"]

REQUIRED: dict[str, str] = {
    "_sock": "the connection's socket, replaced by a buffered reader in the fast ingest mode",
    "_sock_close": "closing the socket without a DISCONNECT, so that the broker sends the will",
}


def close_socket(client: paho.Client) -> None:
    """Close the TCP connection without an MQTT DISCONNECT.

    paho's own socket close is the one way to do it that also unregisters the socket
    from the event loop (through ``on_socket_close``) and fires no ``on_disconnect`` into
    an aiomqtt client that was cancelled halfway (its ``on_disconnect`` fails on a
    cancelled CONNACK future).
    """
    client._sock_close()


def replace_socket(client: paho.Client, wrap: Any) -> None:
    """Replace a plain TCP socket with ``wrap(socket)``; leave any other socket (TLS,
    websockets, none yet) alone."""
    sock = client.socket()
    if type(sock) is socket.socket:
        client._sock = wrap(sock)


def missing_attributes() -> list[str]:
    """The names of ``REQUIRED`` this paho-mqtt lacks (an empty list: none)."""
    probe = paho.Client(CallbackAPIVersion.VERSION2)
    return [name for name in REQUIRED if not hasattr(probe, name)]
