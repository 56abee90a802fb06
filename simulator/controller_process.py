"""A controller as a subprocess: ``edgefleet controller serve``, started, killed, stopped.

The one harness for a real controller process: the demo, the benchmarks and the tests
use it. With ``broker="embedded"`` the controller runs its own amqtt broker on
``mqtt_port``; otherwise ``broker`` is the ``mqtt://`` URL of a broker others share.
Replicas share a ``data_dir`` (keys and artifacts, as on a shared volume) and a
``database_url``; the key passphrase lives beside the data directory, so every replica
of one data directory reads the same keys. With ``tls=True`` it serves HTTPS and the
embedded broker's TLS listener on ``mqtts_port``, with the CA that ``edgefleet ca init``
made in the data directory (run it first); ``ca_file`` is that CA, which the readiness
probe and clients verify the controller against.

Invariants: the process gets a clean environment (no ``EDGEFLEET_*`` of the caller's);
``start`` returns only once ``/readyz`` answers 200, and raises if the process exits
first or ``STARTUP_TIMEOUT_S`` passes; ``stop`` sends SIGTERM and kills after
``STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

__all__ = ["ControllerProcess", "port_or_free"]

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
READY_POLL_S = 0.3


def port_or_free(preferred: int) -> int:
    """``preferred`` if nothing listens there on loopback, else (or for 0) a free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            if preferred:
                return preferred
        except OSError:
            pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ControllerProcess:
    """``edgefleet controller serve`` with its log in ``state_dir/controller.log``."""

    state_dir: Path
    http_port: int = 0  # 0: a free port
    mqtt_port: int = 0  # the embedded broker's; 0: a free port
    # "embedded", or the mqtt:// URL of a broker the controller and devices use.
    broker: str = "embedded"
    data_dir: Path | None = None  # default: state_dir / "controller"
    database_url: str = ""  # default: SQLite in the data directory
    controller_id: str = ""
    shared_group: str = ""
    # HTTPS and MQTT over TLS (needs `edgefleet ca init` in data_dir first).
    tls: bool = False
    mqtts_port: int = 0  # the embedded broker's TLS port, with tls; 0: a free port
    # More EDGEFLEET_* settings; these win over the defaults below.
    settings: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.http_port = port_or_free(self.http_port)
        if self.broker == "embedded":
            self.mqtt_port = port_or_free(self.mqtt_port)
            if self.tls:
                self.mqtts_port = port_or_free(self.mqtts_port)
        if self.data_dir is None:
            self.data_dir = self.state_dir / "controller"

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate ``edgefleet ca init`` wrote (what clients verify against)."""
        assert self.data_dir is not None
        return self.data_dir / "tls" / "ca.crt"

    def verify(self) -> ssl.SSLContext | bool:
        """What an HTTP client of this controller verifies: its CA with TLS on."""
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.tls else True

    @property
    def log(self) -> Path:
        return self.state_dir / "controller.log"

    @property
    def env(self) -> dict[str, str]:
        assert self.data_dir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env |= {
            "EDGEFLEET_DATA_DIR": str(self.data_dir),
            "EDGEFLEET_HOST": "127.0.0.1",
            "EDGEFLEET_PORT": str(self.http_port),
            "EDGEFLEET_BROKER": self.broker,
            "EDGEFLEET_KEY_PASSPHRASE": self._passphrase(),
            "EDGEFLEET_PLAN_INTERVAL_S": "0.5",
            "EDGEFLEET_INGEST_FLUSH_S": "0.2",
        }
        if self.broker == "embedded":
            env |= {"EDGEFLEET_MQTT_HOST": "127.0.0.1", "EDGEFLEET_MQTT_PORT": str(self.mqtt_port)}
            if self.tls:
                env["EDGEFLEET_MQTTS_PORT"] = str(self.mqtts_port)
        if self.tls:
            env["EDGEFLEET_TLS"] = "true"
        optional = {
            "EDGEFLEET_DATABASE_URL": self.database_url,
            "EDGEFLEET_CONTROLLER_ID": self.controller_id,
            "EDGEFLEET_SHARED_SUBSCRIPTION_GROUP": self.shared_group,
        }
        env |= {name: value for name, value in optional.items() if value}
        return env | dict(self.settings)

    def _passphrase(self) -> str:
        assert self.data_dir is not None
        path = self.data_dir.parent / "key-passphrase"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "controller", "controller", "serve"],
                env=self.env,
                stdout=log,
                stderr=log,
            )
        verify = self.verify()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"the controller exited with {self.process.returncode}; see {self.log}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2, verify=verify).status_code == 200:
                    return
            time.sleep(READY_POLL_S)
        raise RuntimeError(f"the controller did not become ready in {STARTUP_TIMEOUT_S:.0f} s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def create_token(self, role: str) -> str:
        """A new API token of ``role``, made on the controller host (``edgefleet tokens``)."""
        result = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "controller", "tokens", "create", "--role", role],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout.strip().splitlines()[-1]

    def kill(self) -> None:
        """SIGKILL: a crash, with no shutdown phase."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"
