"""Fixtures for the MQTT link: a Mosquitto that restarts on the same port, a TCP proxy
that can cut or refuse connections and counts them, and a runner that drives a real
``MqttLink`` on its own event loop in a background thread, so that tests stay synchronous
and use ``tests.mqtt_client.TestClient`` (blocking, with timeouts) as the other side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import pytest

from agent.link.mqtt import LinkSettings, Message, MqttLink
from agent.link.outbox import Outbox
from tests.agent.link.device_topics import DEVICE, DeviceTopics
from tests.brokers import BrokerEndpoint

WAIT_S = 30.0
Received = tuple[str, bytes, bool]
Handler = Callable[[str, bytes, bool], Awaitable[None]]
_T = TypeVar("_T")


class TcpProxy:
    """A loopback TCP proxy in front of a broker, on its own thread.

    ``connections`` counts every connection accepted; ``sever()`` resets every open one
    (no MQTT DISCONNECT: the broker sees a lost client); while ``refusing``, a new
    connection is reset at once (the broker is unreachable); while ``black_hole``, what the
    client sends is dropped, so the broker never answers it (no PUBACK, no CONNACK).
    """

    def __init__(self, target: BrokerEndpoint) -> None:
        self.target = target
        self.connections = 0
        self.refusing = False
        self.black_hole = False
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
                    continue
                writer.write(data)
                await writer.drain()
        # One side gone: cut the other one too, as a broken network would.
        writer.transport.abort()


@pytest.fixture
def proxy_to() -> Iterator[Callable[[BrokerEndpoint], TcpProxy]]:
    proxies: list[TcpProxy] = []

    def start(target: BrokerEndpoint) -> TcpProxy:
        proxy = TcpProxy(target).__enter__()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.__exit__(None, None, None)


class LinkRunner:
    """Runs ``link.run`` on its own event loop in a thread; records what it delivers."""

    def __init__(self, link: MqttLink, on_message: Handler | None = None) -> None:
        self.link = link
        self.received: queue.Queue[Received] = queue.Queue()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._handler = on_message or self.record
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def record(self, topic: str, payload: bytes, retained: bool) -> None:
        self.received.put((topic, payload, retained))

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        try:
            await self.link.run(self._handler, self._stop)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def start(self) -> LinkRunner:
        self._thread.start()
        assert self._ready.wait(WAIT_S), "the link's event loop did not start"
        return self

    def publish(self, message: Message) -> None:
        """``link.publish`` on the link's loop; returns once the message is in the outbox."""
        assert self._loop is not None

        async def put() -> None:
            self.link.publish(message)

        asyncio.run_coroutine_threadsafe(put(), self._loop).result(timeout=WAIT_S)

    def is_connected(self) -> bool:
        assert self._loop is not None

        async def read() -> bool:
            return self.link.connected

        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(timeout=WAIT_S)

    def stop(self, timeout_s: float = WAIT_S) -> float:
        """Set the stop event; return how long ``run()`` took to return."""
        assert self._loop is not None
        assert self._stop is not None
        started = time.monotonic()
        self._loop.call_soon_threadsafe(self._stop.set)
        assert self.done.wait(timeout_s), f"run() did not return within {timeout_s} s of stop"
        elapsed_s = time.monotonic() - started
        self._thread.join(timeout=timeout_s)
        return elapsed_s

    def receive(self, timeout_s: float = WAIT_S) -> Received:
        return self.received.get(timeout=timeout_s)


@pytest.fixture
def device(topic_prefix: str) -> DeviceTopics:
    return DeviceTopics(topic_prefix)


class LogWatch(logging.Handler):
    """Sets ``seen`` when a record whose message contains ``text`` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


@pytest.fixture
def watch_link_log() -> Iterator[Callable[[str], threading.Event]]:
    """An event set when the link logs a message containing the given text."""
    link_logger = logging.getLogger("agent.link.mqtt")
    watches: list[LogWatch] = []

    def watch(text: str) -> threading.Event:
        handler = LogWatch(text)
        link_logger.addHandler(handler)
        watches.append(handler)
        return handler.seen

    yield watch
    for handler in watches:
        link_logger.removeHandler(handler)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


def fast_settings(endpoint: BrokerEndpoint, **overrides: object) -> LinkSettings:
    """Settings with short timeouts and backoff, so that reconnects take milliseconds."""
    fields: dict[str, object] = {
        "host": endpoint.host,
        "port": endpoint.port,
        "client_id": DEVICE,
        "keepalive_s": 5,
        "connect_timeout_s": 3.0,
        "ack_timeout_s": 3.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
    }
    fields.update(overrides)
    return LinkSettings(**fields)  # type: ignore[arg-type]


@pytest.fixture
def run_link(outbox: Outbox, device: DeviceTopics) -> Iterator[Callable[..., LinkRunner]]:
    """Start a link to an endpoint; every runner still going is stopped after the test."""
    runners: list[LinkRunner] = []

    def start(
        endpoint: BrokerEndpoint,
        *,
        on_message: Handler | None = None,
        subscriptions: list[tuple[str, int]] | None = None,
        **settings: object,
    ) -> LinkRunner:
        link = MqttLink(
            fast_settings(endpoint, **settings),
            outbox=outbox,
            will=device.will,
            birth=device.birth,
            subscriptions=subscriptions if subscriptions is not None else [],
        )
        runner = LinkRunner(link, on_message).start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        if not runner.done.is_set():
            runner.stop()
