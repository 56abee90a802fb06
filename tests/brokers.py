"""Real MQTT brokers for tests: a Mosquitto subprocess and the embedded amqtt broker.

Each broker listens on its own free loopback port, never on 1883, so tests never share
state with a broker the machine already runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BROKER_START_TIMEOUT_S = 15.0
MOSQUITTO_SEARCH_PATH = "/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin"


@dataclass(frozen=True)
class BrokerEndpoint:
    kind: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


# Below Linux's ephemeral range (32768-60999): a port handed to a process that binds it
# later cannot meanwhile become some client connection's local port. (It did: an agent
# found its inference port taken, "address already in use", and a fleet test failed.)
FREE_PORT_RANGE = range(20000, 32768)
FREE_PORT_ATTEMPTS = 64
# Ports handed out lately by this process: free_port only sees what listens now, and a
# test often picks a port for a process that binds it seconds later.
_RECENTLY_GIVEN: collections.deque[int] = collections.deque(maxlen=512)


def _worker_ports() -> range:
    """This test process's share of FREE_PORT_RANGE: pytest-xdist workers never pick the
    same port (with 4 workers, an agent found its port taken by another worker's)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return FREE_PORT_RANGE
    index = int(worker[2:]) % count
    size = len(FREE_PORT_RANGE) // count
    start = FREE_PORT_RANGE.start + index * size
    return range(start, start + size)


def free_port() -> int:
    """A loopback port nothing listens on now and this process did not hand out lately,
    in this worker's share of the range outside the ephemeral ports if possible."""
    rng = random.SystemRandom()
    ports = _worker_ports()
    for _ in range(FREE_PORT_ATTEMPTS):
        port = rng.choice(ports)
        if port in _RECENTLY_GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _RECENTLY_GIVEN.append(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float, alive: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"broker exited before listening on {host}:{port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or shutil.which("mosquitto", path=MOSQUITTO_SEARCH_PATH)


class MosquittoServer:
    """A Mosquitto subprocess that can be stopped and started again on the same port."""

    def __init__(self, binary: str, workdir: Path, *, extra_config: str = "") -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.extra_config = extra_config or "allow_anonymous true\n"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint("mosquitto", "127.0.0.1", self.port)

    def start(self) -> None:
        config = self.workdir / "mosquitto.conf"
        log = self.workdir / "mosquitto.log"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{self.extra_config}"
            "persistence false\n"
            f"log_dest file {log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )
        process = subprocess.Popen(
            [self.binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._process = process
        try:
            wait_for_port(
                "127.0.0.1",
                self.port,
                BROKER_START_TIMEOUT_S,
                alive=lambda: process.poll() is None,
            )
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            log_text = log.read_text() if log.exists() else ""
            raise RuntimeError(
                f"mosquitto did not start on {self.port}: {exc}\n{log_text}"
            ) from exc

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        terminate(process)
        if process.stderr is not None:
            process.stderr.close()

    def restart(self) -> None:
        """Stop, then start with the same config on the same port."""
        self.stop()
        self.start()


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s, and wait for the process to end."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def run_embedded_amqtt(plugins: dict[str, Any] | None = None) -> Iterator[BrokerEndpoint]:
    """Run the controller's embedded amqtt broker on its own event loop in a thread;
    ``plugins`` replaces the default, which lets anyone in."""
    port = free_port()
    if plugins is None:
        plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": plugins,
    }
    with run_amqtt(config, port) as endpoint:
        yield endpoint


@contextlib.contextmanager
def run_amqtt(
    config: dict[str, Any], port: int, make_broker: Any = None
) -> Iterator[BrokerEndpoint]:
    """An amqtt broker with ``config`` (listening on ``port``) on its own event loop in a
    background thread; ``make_broker(config, loop=...)`` defaults to ``EmbeddedBroker``."""
    if make_broker is None:
        from controller.mqtt.embedded_broker import EmbeddedBroker

        make_broker = EmbeddedBroker
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        broker = make_broker(config, loop=loop)
        await broker.start()
        holder["broker"] = broker

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # reported to the waiting fixture
            holder["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name=f"amqtt-{port}", daemon=True)
    thread.start()
    started.wait(BROKER_START_TIMEOUT_S)
    if "error" in holder or "broker" not in holder:
        raise RuntimeError(f"the amqtt broker did not start: {holder.get('error')}")
    try:
        wait_for_port("127.0.0.1", port, BROKER_START_TIMEOUT_S)
        yield BrokerEndpoint("amqtt", "127.0.0.1", port)
    finally:
        future = asyncio.run_coroutine_threadsafe(holder["broker"].shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


NGINX_SEARCH_PATH = "/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin"
NGINX_START_TIMEOUT_S = 15.0


def find_nginx() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path=NGINX_SEARCH_PATH)


def nginx_binary() -> str:
    """Debian's nginx, or skip the test (fail it with CI=true): ``make test`` installs it."""
    binary = find_nginx()
    if binary is None:
        from tests.conftest import require_service

        require_service("nginx", "install it with 'apt-get install nginx' (make test does as root)")
        raise AssertionError("unreachable")
    return binary


class NginxServer:
    """nginx serving ``root`` as static files on a free loopback port: an artifact mirror.

    Its own config, prefix, pid file, temp dirs and logs live in ``workdir``; it runs in
    the foreground as one process (``master_process off``), so it never switches user
    when the tests run as root and needs no privileges when they do not. The access log
    has one line per request: ``<status> <bytes sent> <uri>``.
    """

    def __init__(self, binary: str, root: Path, workdir: Path) -> None:
        self.binary = binary
        self.root = root
        self.workdir = workdir
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.workdir / "access.log"

    def served(self) -> list[tuple[int, int, str]]:
        """(status, bytes sent, URI) of every request answered so far."""
        if not self.access_log.exists():
            return []
        lines = self.access_log.read_text().splitlines()
        return [(int(s), int(b), uri) for s, b, uri in (line.split(" ", 2) for line in lines)]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "nginx.conf"
        temp = {name: self.workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        config.write_text(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n"
            f"pid {self.workdir / 'nginx.pid'};\n"
            f"error_log {self.workdir / 'error.log'} warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            "  log_format mirror '$status $body_bytes_sent $request_uri';\n"
            f"  access_log {self.access_log} mirror;\n"
            f"  client_body_temp_path {temp['body']};\n"
            f"  proxy_temp_path {temp['proxy']};\n"
            f"  fastcgi_temp_path {temp['fastcgi']};\n"
            f"  uwsgi_temp_path {temp['uwsgi']};\n"
            f"  scgi_temp_path {temp['scgi']};\n"
            "  default_type application/octet-stream;\n"
            "  sendfile on;\n"
            "  keepalive_requests 100000;\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {self.root}; }}\n"
            "}\n"
        )
        process = subprocess.Popen(
            [
                self.binary,
                "-p",
                str(self.workdir),
                "-e",
                str(self.workdir / "error.log"),
                "-c",
                str(config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._process = process
        try:
            wait_for_port(
                "127.0.0.1", self.port, NGINX_START_TIMEOUT_S, alive=lambda: process.poll() is None
            )
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            error_log = self.workdir / "error.log"
            log_text = error_log.read_text() if error_log.exists() else ""
            raise RuntimeError(f"nginx did not start on {self.port}: {exc}\n{log_text}") from exc

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        terminate(process)
        if process.stderr is not None:
            process.stderr.close()


@contextlib.contextmanager
def run_nginx(root: Path, workdir: Path) -> Iterator[NginxServer]:
    """An nginx of the caller's own serving ``root``; stopped on exit."""
    server = NginxServer(nginx_binary(), root, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
