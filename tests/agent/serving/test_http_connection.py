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


class RawConnection:
    """A socket and a buffered reader on it: bytes of the next response stay buffered."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[bytes, dict[bytes, bytes], bytes]:
        status = self.reader.readline().rstrip(b"\r\n")
        if not status:
            raise ConnectionError("closed before a response")
        headers = {}
        while line := self.reader.readline().rstrip(b"\r\n"):
            name, _, value = line.partition(b": ")
            headers[name.lower()] = value
        if status.startswith(b"HTTP/1.1 1"):  # an interim response has no body
            return status, headers, b""
        return status, headers, self.reader.read(int(headers[b"content-length"]))

    def closed_by_server(self) -> bool:
        return self.reader.read(1) == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def connection(models: Models, serve: Any) -> Iterator[RawConnection]:
    api: RunningApi = serve(loaded_server("affine", models.affine_one))
    raw = RawConnection(api.port)
    yield raw
    raw.close()


def test_many_requests_share_one_connection(connection: RawConnection) -> None:
    for _ in range(20):
        connection.send(infer_request())
        status, _, body = connection.response()
        assert status.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["outputs"][0]["data"] == [2, 3, 4, 5]


def test_pipelined_requests_are_answered_in_order(connection: RawConnection) -> None:
    other = BODY.replace(b"[1, 2, 3, 4]", b"[5, 6, 7, 8]")
    connection.send(infer_request() + infer_request(body=other))
    first, second = connection.response()[2], connection.response()[2]
    assert json.loads(first)["outputs"][0]["data"] == [2, 3, 4, 5]
    assert json.loads(second)["outputs"][0]["data"] == [6, 7, 8, 9]


def test_expect_100_continue_is_honoured(connection: RawConnection) -> None:
    head, _, body = infer_request(b"expect: 100-continue").partition(b"\r\n\r\n")
    connection.send(head + b"\r\n\r\n")
    assert connection.response()[0].startswith(b"HTTP/1.1 100")
    connection.send(body)
    assert connection.response()[0].startswith(b"HTTP/1.1 200")


def test_connection_close_is_honoured(connection: RawConnection) -> None:
    connection.send(infer_request(b"connection: close"))
    status, headers, _ = connection.response()
    assert status.startswith(b"HTTP/1.1 200")
    assert headers[b"connection"] == b"close"
    assert connection.closed_by_server()


def test_garbage_gets_400_and_the_connection_closes(connection: RawConnection) -> None:
    connection.send(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    status, _, body = connection.response()
    assert status.startswith(b"HTTP/1.1 400")
    assert "bad HTTP" in json.loads(body)["error"]
    assert connection.closed_by_server()
