"""HTTP/1.1 on one raw connection: keep-alive, pipelining, 100-continue, garbage, close."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.agent.serving.conftest import Models, RunningApi, loaded_server

BODY = json.dumps(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
).encode()


def infer_request(*extra_headers: bytes, body: bytes = BODY) -> bytes:
    head = [
        b"POST /v2/models/affine/infer HTTP/1.1",
        b"host: 127.0.0.1",
        b"content-length: %d" % len(body),
        *extra_headers,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def read_response(sock: socket.socket) -> tuple[bytes, dict[bytes, bytes], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    while len(body) < int(headers[b"content-length"]):
        body += sock.recv(65536)
    return status, headers, body


@pytest.fixture
def connection(models: Models, serve: Any) -> Iterator[socket.socket]:
    api: RunningApi = serve(loaded_server("affine", models.affine_one))
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        yield sock


def test_many_requests_share_one_connection(connection: socket.socket) -> None:
    for _ in range(20):
        connection.sendall(infer_request())
        status, _, body = read_response(connection)
        assert status.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["outputs"][0]["data"] == [2, 3, 4, 5]


def test_pipelined_requests_are_answered_in_order(connection: socket.socket) -> None:
    other = BODY.replace(b"[1, 2, 3, 4]", b"[5, 6, 7, 8]")
    connection.sendall(infer_request() + infer_request(body=other))
    first, second = read_response(connection)[2], read_response(connection)[2]
    assert json.loads(first)["outputs"][0]["data"] == [2, 3, 4, 5]
    assert json.loads(second)["outputs"][0]["data"] == [6, 7, 8, 9]


def test_expect_100_continue_is_honoured(connection: socket.socket) -> None:
    head, _, body = infer_request(b"expect: 100-continue").partition(b"\r\n\r\n")
    connection.sendall(head + b"\r\n\r\n")
    assert connection.recv(65536).startswith(b"HTTP/1.1 100")
    connection.sendall(body)
    assert read_response(connection)[0].startswith(b"HTTP/1.1 200")


def test_connection_close_is_honoured(connection: socket.socket) -> None:
    connection.sendall(infer_request(b"connection: close"))
    status, headers, _ = read_response(connection)
    assert status.startswith(b"HTTP/1.1 200")
    assert headers[b"connection"] == b"close"
    assert connection.recv(1) == b""


def test_garbage_gets_400_and_the_connection_closes(connection: socket.socket) -> None:
    connection.sendall(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    status, _, body = read_response(connection)
    assert status.startswith(b"HTTP/1.1 400")
    assert "bad HTTP" in json.loads(body)["error"]
    assert connection.recv(1) == b""
