"""Network faults on loopback: a TCP proxy that cuts broker connections, and an artifact
server that corrupts what it forwards.

``BrokerProxy`` listens on one port per device group and pipes bytes to the broker. A
device is identified by the port it connects to (each simulated device gets its own
listening port only when it has planned cuts or flakiness, see ``simulator.run``);
``cut(key)`` closes that device's open connections at once (the broker sees a dropped
socket and publishes the will) and ``block(key, seconds)`` refuses its new connections
for a while. Nothing is mocked: agents, broker and controller see real TCP.

``CorruptingArtifactServer`` is a small HTTP/1.1 server: it fetches the requested path
from the controller with httpx and returns the same status and headers with one byte
flipped in every body, so the agent's hash check refuses every download from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

import httpx

__all__ = ["BrokerProxy", "CorruptingArtifactServer"]

logger = logging.getLogger(__name__)

PIPE_CHUNK_BYTES = 64 * 1024
MAX_REQUEST_HEAD_BYTES = 16 * 1024


class BrokerProxy:
    """One listening port per key; every connection is piped to ``upstream``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._servers: dict[str, asyncio.Server] = {}
        self._connections: dict[str, set[asyncio.StreamWriter]] = defaultdict(set)
        self._blocked_until: dict[str, float] = {}
        self.cuts = 0

    async def listen(self, key: str) -> int:
        """Open a port for ``key`` on 127.0.0.1; return it."""

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._pipe_connection(key, reader, writer)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self._servers[key] = server
        port: int = server.sockets[0].getsockname()[1]
        return port

    def cut(self, key: str, *, block_s: float = 0.0) -> None:
        """Drop ``key``'s connections now and refuse new ones for ``block_s``."""
        self._blocked_until[key] = time.monotonic() + block_s
        for writer in list(self._connections[key]):
            self.cuts += 1
            writer.transport.abort()

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        for writers in self._connections.values():
            for writer in writers:
                writer.transport.abort()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _pipe_connection(
        self, key: str, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if time.monotonic() < self._blocked_until.get(key, 0.0):
            client_writer.transport.abort()
            return
        try:
            broker_reader, broker_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_writer.transport.abort()
            return
        connections = self._connections[key]
        connections.add(client_writer)
        try:
            await asyncio.gather(
                _pipe(client_reader, broker_writer), _pipe(broker_reader, client_writer)
            )
        finally:
            connections.discard(client_writer)
            # Either side gone: cut both, as a network failure would.
            client_writer.transport.abort()
            broker_writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(PIPE_CHUNK_BYTES):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


class CorruptingArtifactServer:
    """Forwards GETs to the controller and flips a byte in every body it returns."""

    def __init__(self, controller_url: str) -> None:
        self._controller_url = controller_url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=30)
        self._server: asyncio.Server | None = None
        self.requests = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        await self._client.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_REQUEST_HEAD_BYTES:
                return
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.lower() in ("authorization", "range", "if-range"):
                    headers[name] = value.strip()
            self.requests += 1
            upstream = await self._client.request(
                method, self._controller_url + path, headers=headers
            )
            body = bytearray(upstream.content)
            if body:
                body[len(body) // 2] ^= 0xFF
            reply = [f"HTTP/1.1 {upstream.status_code} {upstream.reason_phrase}"]
            for name in ("content-type", "content-range", "accept-ranges"):
                if name in upstream.headers:
                    reply.append(f"{name}: {upstream.headers[name]}")
            reply += [f"content-length: {len(body)}", "connection: close", "", ""]
            writer.write("\r\n".join(reply).encode("latin-1") + bytes(body))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, OSError):
            pass
        except httpx.HTTPError as exc:
            logger.debug("corrupting server: upstream failed: %s", exc)
        finally:
            writer.close()
