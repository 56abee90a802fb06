"""A loopback TCP proxy in front of a broker, to cut, refuse or silence connections."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

from tests.brokers import BrokerEndpoint

WAIT_S = 30.0
_T = TypeVar("_T")


class TcpProxy:
    """A loopback TCP proxy in front of a broker, on its own thread.

    ``connections`` counts every connection accepted; ``sever()`` resets every open one
    (no MQTT DISCONNECT: the broker sees a lost client); while ``refusing``, a new
    connection is reset at once (the broker is unreachable); while ``black_hole``, what the
    client sends is dropped, so the broker never answers it (no PUBACK, no CONNACK), and
    ``wait_for_swallowed()`` waits until some of it was.
    """

    def __init__(self, target: BrokerEndpoint) -> None:
        self.target = target
        self.connections = 0
        self.refusing = False
        self.black_hole = False
        self.swallowed_bytes = 0
        self._accepted = threading.Condition()
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint(self.target.kind, "127.0.0.1", self.port)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        async def shut_down() -> None:
            if self._server is not None:
                self._server.close()
            for pair in list(self._pairs):
                for writer in pair:
                    writer.transport.abort()
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=WAIT_S)

        self._call(shut_down())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=WAIT_S)
        self._loop.close()

    def wait_for_connections(self, count: int, timeout_s: float = WAIT_S) -> None:
        with self._accepted:
            reached = self._accepted.wait_for(lambda: self.connections >= count, timeout_s)
        assert reached, f"{self.connections} connections after {timeout_s} s, not {count}"

    def wait_for_swallowed(self, timeout_s: float = WAIT_S) -> None:
        """Wait until the black hole has dropped something the client sent."""
        with self._accepted:
            swallowed = self._accepted.wait_for(lambda: self.swallowed_bytes > 0, timeout_s)
        assert swallowed, f"the client sent nothing into the black hole within {timeout_s} s"

    def sever(self) -> None:
        async def cut() -> None:
            for pair in list(self._pairs):
                for writer in pair:
                    writer.transport.abort()

        self._call(cut())

    def _call(self, coroutine: Awaitable[_T]) -> _T:
        async def wrap() -> _T:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result(timeout=WAIT_S)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._accepted:
            self.connections += 1
            self._accepted.notify_all()
        if self.refusing:
            writer.transport.abort()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target.host, self.target.port)
        except OSError:
            writer.transport.abort()
            writer.close()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, from_client=True),
                self._pump(up_reader, writer, from_client=False),
            )
        finally:
            self._pairs.discard(pair)
            for side in pair:
                side.transport.abort()
                side.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65_536):
                if from_client and self.black_hole:
                    with self._accepted:
                        self.swallowed_bytes += len(data)
                        self._accepted.notify_all()
                    continue
                writer.write(data)
                await writer.drain()
        # One side gone: cut the other one too, as a broken network would.
        writer.transport.abort()
