"""BrokerProxy and CorruptingArtifactServer over real loopback sockets.

The proxy sits in front of a small echo server (standing in for the broker), the
corrupting server in front of a small HTTP server (standing in for the controller).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest

from simulator import proxies
from simulator.proxies import BrokerProxy, CorruptingArtifactServer

IO_TIMEOUT_S = 5.0
ARTIFACT = bytes(range(256)) * 40

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout=20)

    return asyncio.run(bounded())


@dataclass
class EchoServer:
    """Echoes every byte back; remembers what it received and when a connection ends."""

    server: asyncio.Server | None = None
    accepted: int = 0
    received: bytearray = field(default_factory=bytearray)
    closed_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while chunk := await reader.read(65536):
                self.received += chunk
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.closed_event.set()
            writer.transport.abort()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await self.server.wait_closed()


@dataclass
class FakeClock:
    """Stands in for the ``time`` module inside ``simulator.proxies`` only."""

    now: float = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(proxies, "time", fake)
    return fake


async def with_proxy(
    body: Callable[[BrokerProxy, EchoServer], Awaitable[T]],
) -> T:
    echo = EchoServer()
    proxy = BrokerProxy("127.0.0.1", await echo.start())
    try:
        return await body(proxy, echo)
    finally:
        await proxy.close()
        await echo.close()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), IO_TIMEOUT_S)


async def assert_dropped(reader: asyncio.StreamReader) -> None:
    """The peer is gone: end of stream or a reset, and no data."""
    try:
        data = await asyncio.wait_for(reader.read(1024), IO_TIMEOUT_S)
    except ConnectionResetError:
        return
    assert data == b""


# -- BrokerProxy --------------------------------------------------------------------------


def test_bytes_pass_through_both_ways() -> None:
    payload = bytes(range(256)) * 1024  # larger than one pipe chunk

    async def body(proxy: BrokerProxy, echo: EchoServer) -> None:
        reader, writer = await connect(await proxy.listen("dev-1"))
        assert await round_trip(reader, writer, b"\x10hello") == b"\x10hello"
        assert await round_trip(reader, writer, payload) == payload
        assert bytes(echo.received) == b"\x10hello" + payload
        writer.close()

    run(with_proxy(body))


def test_cut_drops_an_open_connection_on_both_sides() -> None:
    async def body(proxy: BrokerProxy, echo: EchoServer) -> None:
        reader, writer = await connect(await proxy.listen("dev-1"))
        await round_trip(reader, writer, b"ping")

        proxy.cut("dev-1")

        await assert_dropped(reader)
        # The broker sees the socket drop too, as it would on a network failure.
        await asyncio.wait_for(echo.closed_event.wait(), IO_TIMEOUT_S)
        assert proxy.cuts == 1
        writer.close()

    run(with_proxy(body))


def test_cut_of_one_key_leaves_other_keys_connected() -> None:
    async def body(proxy: BrokerProxy, echo: EchoServer) -> None:
        port_a, port_b = await proxy.listen("a"), await proxy.listen("b")
        a1, a2, b1 = await connect(port_a), await connect(port_a), await connect(port_b)
        for reader, writer in (a1, a2, b1):
            await round_trip(reader, writer, b"hi")

        proxy.cut("a")

        await assert_dropped(a1[0])
        await assert_dropped(a2[0])
        assert await round_trip(*b1, b"still here") == b"still here"
        assert proxy.cuts == 2

        proxy.cut("b")
        await assert_dropped(b1[0])
        assert proxy.cuts == 3
        for _, writer in (a1, a2, b1):
            writer.close()

    run(with_proxy(body))


def test_cut_without_open_connections_counts_nothing() -> None:
    async def body(proxy: BrokerProxy, echo: EchoServer) -> None:
        await proxy.listen("dev-1")
        proxy.cut("dev-1")
        assert proxy.cuts == 0

    run(with_proxy(body))


def test_new_connection_is_refused_while_blocked_and_accepted_after(clock: FakeClock) -> None:
    async def body(proxy: BrokerProxy, echo: EchoServer) -> None:
        port = await proxy.listen("dev-1")
        proxy.cut("dev-1", block_s=10.0)

        clock.now += 9.9
        reader, writer = await connect(port)
        await assert_dropped(reader)
        writer.close()
        assert echo.accepted == 0  # the broker never saw the blocked connection

        clock.now += 0.2
        reader, writer = await connect(port)
        assert await round_trip(reader, writer, b"back") == b"back"
        assert echo.accepted == 1
        writer.close()

    run(with_proxy(body))


def test_block_applies_only_to_its_key(clock: FakeClock) -> None:
    async def body(proxy: BrokerProxy, echo: EchoServer) -> None:
        port_a, port_b = await proxy.listen("a"), await proxy.listen("b")
        proxy.cut("a", block_s=10.0)

        reader, writer = await connect(port_b)
        assert await round_trip(reader, writer, b"ok") == b"ok"
        writer.close()
        reader, writer = await connect(port_a)
        await assert_dropped(reader)
        writer.close()

    run(with_proxy(body))


def test_connection_is_dropped_when_the_broker_is_down() -> None:
    async def body(proxy: BrokerProxy, echo: EchoServer) -> None:
        port = await proxy.listen("dev-1")
        await echo.close()

        reader, writer = await connect(port)
        await assert_dropped(reader)
        writer.close()

    run(with_proxy(body))


# -- CorruptingArtifactServer ---------------------------------------------------------------


@dataclass
class Upstream:
    url: str
    headers: list[dict[str, str]]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """A small HTTP server: /artifact is 200 with ARTIFACT, anything else 404."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append(dict(self.headers.items()))
            status, body, kind = (
                (200, ARTIFACT, "application/octet-stream")
                if self.path == "/artifact"
                else (404, b'{"detail": "no such artifact"}', "application/json")
            )
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Upstream(f"http://127.0.0.1:{server.server_address[1]}/", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def get_through_corrupting_server(
    upstream_url: str, path: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, int]:
    async def fetch() -> tuple[httpx.Response, int]:
        corrupting = CorruptingArtifactServer(upstream_url)
        try:
            base = await corrupting.start()
            async with httpx.AsyncClient(timeout=IO_TIMEOUT_S) as client:
                response = await client.get(base + path, headers=headers)
            return response, corrupting.requests
        finally:
            await corrupting.close()

    return run(fetch())


def differing_bytes(a: bytes, b: bytes) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


def test_body_arrives_with_exactly_one_byte_flipped(upstream: Upstream) -> None:
    response, requests = get_through_corrupting_server(upstream.url, "/artifact")

    assert response.status_code == 200
    assert len(response.content) == len(ARTIFACT)
    assert int(response.headers["content-length"]) == len(ARTIFACT)
    assert response.headers["content-type"] == "application/octet-stream"
    assert differing_bytes(response.content, ARTIFACT) == 1
    assert requests == 1


def test_status_code_passes_through(upstream: Upstream) -> None:
    response, _ = get_through_corrupting_server(upstream.url, "/missing")

    assert response.status_code == 404
    assert len(response.content) == len(b'{"detail": "no such artifact"}')


def test_authorization_and_range_are_forwarded(upstream: Upstream) -> None:
    get_through_corrupting_server(
        upstream.url, "/artifact", {"Authorization": "Bearer device-token", "Range": "bytes=0-"}
    )

    [headers] = upstream.headers
    lowered = {name.lower(): value for name, value in headers.items()}
    assert lowered["authorization"] == "Bearer device-token"
    assert lowered["range"] == "bytes=0-"
