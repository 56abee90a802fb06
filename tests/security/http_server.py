"""A controller served by uvicorn on a loopback port, as ``serve`` configures it, and
raw-socket clients that send requests as slowly or as wrongly as an attacker would."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from controller.app import create_app
from controller.db import session_scope
from controller.server import uvicorn_config
from controller.settings import Settings, load_settings
from controller.tokens import Role, create_token

TEST_PASSPHRASE = "test passphrase"
STARTUP_TIMEOUT_S = 10.0
# How long a test's socket waits for the server: patience, not a threshold (the tests that
# time the server measure it themselves). 2 s once expired on a loaded CI machine before
# an ordinary 422 arrived.
ANSWER_TIMEOUT_S = 10.0


@dataclass
class ServedController:
    app: FastAPI
    settings: Settings
    port: int

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def token(self, role: Role) -> str:
        with session_scope(self.app.state.ctx.engine) as session:
            return create_token(session, name=f"test-{role.value}", role=role)


def controller_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings(
        environ={},
        overrides={
            "data_dir": tmp_path / "data",
            "database_url": f"sqlite:///{tmp_path / 'controller.db'}",
            "fleet_enabled": False,
            **overrides,
        },
    )


@contextmanager
def served(settings: Settings) -> Iterator[ServedController]:
    app = create_app(settings, environ={"EDGEFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE})
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(settings.model_copy(update={"port": port}), app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.01)
    try:
        yield ServedController(app, settings, port)
    finally:
        server.should_exit = True
        thread.join(STARTUP_TIMEOUT_S)
        listener.close()
        app.state.ctx.engine.dispose()


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of one response (``Content-Length`` framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (within the socket's timeout)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def get(served: ServedController, path: str) -> int:
    with served.connect() as sock:
        sock.sendall(request_head("GET", path, {"Connection": "close"}))
        status, _headers, _body = read_answer(sock)
        return status


def metric(served: ServedController, sample: str) -> float:
    """The value of one sample (``name{labels}``) of ``/metrics``, as a scraper reads it."""
    with served.connect() as sock:
        headers = {"Authorization": f"Bearer {served.token(Role.VIEWER)}", "Connection": "close"}
        sock.sendall(request_head("GET", "/metrics", headers))
        status, _headers, body = read_answer(sock)
    assert status == 200, body
    for line in body.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    raise AssertionError(f"{sample} is not in /metrics")
