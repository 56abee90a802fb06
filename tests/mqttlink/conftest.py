"""Fixtures for mqttlink on real brokers, and on a fake one that never acknowledges."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from mqttlink import SessionSettings
from tests.brokers import BrokerEndpoint, MosquittoServer, run_embedded_amqtt

WAIT_S = 30.0
USER, PASSWORD = "device", "correct-horse-battery"
_CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


def settings_for(endpoint: BrokerEndpoint, client_id: str, **overrides: Any) -> SessionSettings:
    """Short timeouts and backoff: a test waits milliseconds, not the defaults' seconds."""
    fields: dict[str, Any] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "client_id": client_id,
        "keepalive_s": 5,
        "connect_timeout_s": 3.0,
        "ack_timeout_s": 3.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
    }
    fields.update(overrides)
    return SessionSettings(**fields)


@pytest.fixture(params=["mosquitto", "amqtt"])
def password_broker(request: pytest.FixtureRequest) -> Iterator[BrokerEndpoint]:
    """A broker that lets in only ``USER`` with ``PASSWORD``: Mosquitto, then amqtt."""
    if request.param == "mosquitto":
        server: MosquittoServer
        server, user, password = request.getfixturevalue("password_mosquitto")
        assert (user, password) == (USER, PASSWORD)
        yield server.endpoint
        return
    plugin = "tests.mqttlink.amqtt_password.OnePasswordAuthPlugin"
    with run_embedded_amqtt({plugin: {"username": USER, "password": PASSWORD}}) as endpoint:
        yield endpoint


@contextlib.asynccontextmanager
async def silent_broker(*, connack: bool) -> AsyncIterator[BrokerEndpoint]:
    """A TCP server on the running loop that never acknowledges anything: no CONNACK, or a
    CONNACK accepting the connection and then nothing (no SUBACK, no PUBACK)."""

    handlers: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        writers.add(writer)
        with contextlib.suppress(OSError):
            if await reader.read(65_536) and connack:  # the CONNECT
                writer.write(_CONNACK_ACCEPTED)
                await writer.drain()
            while await reader.read(65_536):
                pass
        writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        yield BrokerEndpoint("silent", "127.0.0.1", port)
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()
        if handlers:
            await asyncio.wait(handlers, timeout=WAIT_S)
