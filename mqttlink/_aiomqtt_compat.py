"""Every reach into a private attribute of aiomqtt, in one place.

aiomqtt does not expose the paho client it drives; mqttlink needs it for what aiomqtt does
not offer: paho's TCP connect timeout, the socket-open callback that starts the CONNACK
clock, manual acknowledgements and paho's own message callback (the fast ingest mode),
and cutting a connection without DISCONNECT. The fast ingest mode's buffered socket also
relies on aiomqtt's socket reader asking ``pending()`` of the socket and reading on while
bytes wait (it does so for TLS sockets).

``REQUIRED`` lists each private name with its use; ``tests/mqttlink/test_compat.py`` fails,
naming the attribute, when an aiomqtt release drops one. Check them before raising
aiomqtt's upper bound in ``pyproject.toml``.
"""

from __future__ import annotations

import inspect

import aiomqtt
import paho.mqtt.client as paho

__all__ = ["REQUIRED", "missing_attributes", "paho_client", "reader_drains_pending"]

REQUIRED: dict[str, str] = {
    "_client": "the paho client aiomqtt drives",
}


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho client under ``client``."""
    return client._client


async def missing_attributes() -> list[str]:
    """The names of ``REQUIRED`` this aiomqtt lacks, or lacks with the expected type.

    A coroutine: an aiomqtt client can only be made inside a running event loop.
    """
    probe = aiomqtt.Client("localhost")
    missing = [name for name in REQUIRED if not hasattr(probe, name)]
    if not missing and not isinstance(probe._client, paho.Client):
        missing.append("_client (not a paho Client)")
    return missing


def reader_drains_pending() -> bool:
    """Whether aiomqtt's socket reader keeps reading while ``sock.pending()`` says bytes
    wait: without it, bytes left in the fast ingest mode's buffer wait for the next packet.
    """
    reader_source = inspect.getsource(aiomqtt.Client._on_socket_open)
    return ".pending()" in reader_source
