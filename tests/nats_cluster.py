"""A real NATS cluster for tests: ``nats-server`` processes clustered on free loopback
ports, each with JetStream (its own store) and an MQTT listener.

Each node's configuration ``include``s ``auth.conf`` beside it when the test writes one
(``edgefleet devices nats-config --out …``); ``reload()`` makes every node read it again.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats

from tests.brokers import BrokerEndpoint, free_port, terminate, wait_for_port

START_TIMEOUT_S = 60.0
NATS_SEARCH_PATH = "/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin"


def find_nats_server() -> str | None:
    return shutil.which("nats-server") or shutil.which("nats-server", path=NATS_SEARCH_PATH)


@dataclass
class NatsNode:
    name: str
    client_port: int
    route_port: int
    mqtt_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def mqtt(self) -> BrokerEndpoint:
        return BrokerEndpoint("nats", "127.0.0.1", self.mqtt_port)


@dataclass
class NatsCluster:
    binary: str
    workdir: Path
    size: int = 3
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nodes = [
            NatsNode(f"n{index}", free_port(), free_port(), free_port())
            for index in range(1, self.size + 1)
        ]

    @property
    def auth_file(self) -> Path:
        return self.workdir / "auth.conf"

    @property
    def nats_url(self) -> str:
        return ",".join(node.nats_url for node in self.nodes)

    @property
    def mqtt_url(self) -> str:
        return ",".join(f"mqtt://127.0.0.1:{node.mqtt_port}" for node in self.nodes)

    def _config(self, node: NatsNode) -> Path:
        routes = ", ".join(
            f"nats-route://127.0.0.1:{other.route_port}" for other in self.nodes if other != node
        )
        include = f"include {self.auth_file.name}\n" if self.auth_file.exists() else ""
        path = self.workdir / f"{node.name}.conf"
        path.write_text(
            f"server_name: {node.name}\n"
            f"listen: 127.0.0.1:{node.client_port}\n"
            f'jetstream {{ store_dir: "{self.workdir / node.name}" }}\n'
            f"cluster {{ name: edgefleet-test, listen: 127.0.0.1:{node.route_port}, "
            f"routes: [{routes}] }}\n"
            # Sessions, retained messages and QoS 1 deliveries on every node: one may die.
            f"mqtt {{ listen: 127.0.0.1:{node.mqtt_port}, stream_replicas: {self.size} }}\n"
            f"{include}"
        )
        return path

    def start(self, user: str | None = None, password: str | None = None) -> None:
        for node in self.nodes:
            self.start_node(node)
        self.wait_ready(user, password)

    def start_node(self, node: NatsNode) -> None:
        config = self._config(node)
        log = (self.workdir / f"{node.name}.log").open("ab")
        node.process = subprocess.Popen(
            [self.binary, "-c", str(config)], stdout=log, stderr=log, cwd=self.workdir
        )
        log.close()
        process = node.process

        def alive() -> bool:
            return process.poll() is None

        for port in (node.client_port, node.mqtt_port):
            wait_for_port("127.0.0.1", port, START_TIMEOUT_S, alive=alive)

    def wait_ready(self, user: str | None = None, password: str | None = None) -> None:
        """Until JetStream answers on every node (a new cluster elects its leader first)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        for node in self.nodes:
            if node.process is None:
                continue
            while not asyncio.run(_jetstream_answers(node.nats_url, user, password)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"JetStream not ready on {node.name}\n{self.log_tail()}")
                time.sleep(0.5)

    def kill(self, node: NatsNode) -> None:
        """SIGKILL: the node dies without a word to its clients."""
        if node.process is not None:
            node.process.kill()
            node.process.wait()
            node.process = None

    def reload(self) -> None:
        """Every running node reads its configuration (and ``auth.conf``) again; returns
        once each has logged the reload (a device that connects before its node reloaded
        would get the permissions of an earlier test's file, and its publishes would be
        dropped in silence)."""
        running = [node for node in self.nodes if node.process is not None]
        before = {node.name: self._reloads(node) for node in running}
        for node in running:
            self._config(node)
            assert node.process is not None
            node.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + START_TIMEOUT_S
        while any(self._reloads(node) <= before[node.name] for node in running):
            if time.monotonic() > deadline:
                raise TimeoutError(f"a node did not reload\n{self.log_tail()}")
            time.sleep(0.05)

    def _reloads(self, node: NatsNode) -> int:
        log = self.workdir / f"{node.name}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return text.count("Reloaded server configuration")

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                terminate(node.process)
                node.process = None

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for node in self.nodes:
            log = self.workdir / f"{node.name}.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"--- {node.name}\n{text[-chars:]}")
        return "\n".join(parts)


async def _jetstream_answers(url: str, user: str | None, password: str | None) -> bool:
    try:
        client = await nats.connect(
            servers=[url],
            user=user,
            password=password,
            connect_timeout=2,
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )
    except Exception:
        return False
    try:
        await client.jetstream(timeout=2).account_info()
        return True
    except Exception:
        return False
    finally:
        await client.close()
