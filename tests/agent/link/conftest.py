"""Fixtures for the MQTT link: a runner that drives a real ``MqttLink`` on its own event
loop in a background thread, so that tests stay synchronous and use
``tests.mqtt_client.TestClient`` (blocking, with timeouts) as the other side. The TCP
proxy that cuts or refuses connections (``proxy_to``) is in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from agent.link.mqtt import LinkSettings, Message, MqttLink
from agent.link.outbox import Outbox
from tests.agent.link.device_topics import DEVICE, DeviceTopics
from tests.brokers import BrokerEndpoint

WAIT_S = 30.0
Received = tuple[str, bytes, bool]
Handler = Callable[[str, bytes, bool], Awaitable[None]]


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
