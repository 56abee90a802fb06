"""A client that sends its request headers slowly, or never finishes them, is cut off.

uvicorn's keep-alive timer stops at a connection's first byte and nothing else times
out headers, so a socket sending ``GET /he`` and then nothing was kept forever; enough
of them use up the controller's file descriptors. The controller closes a connection
whose headers are not complete within ``request_header_timeout_s``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.http_server import (
    ServedController,
    closed_by_server,
    controller_settings,
    read_answer,
    request_head,
    served,
)

HEADER_TIMEOUT_S = 0.5


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ServedController]:
    with served(controller_settings(tmp_path, request_header_timeout_s=HEADER_TIMEOUT_S)) as c:
        yield c


def test_headers_that_never_end_are_cut_off(controller: ServedController) -> None:
    with controller.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        started = time.monotonic()
        assert closed_by_server(sock)
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 1.0


def test_connection_that_never_sends_a_request_is_cut_off(controller: ServedController) -> None:
    with controller.connect() as sock:
        started = time.monotonic()
        assert closed_by_server(sock)
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 1.0


def test_a_request_past_its_headers_is_not_cut_off_by_the_header_timeout(
    controller: ServedController,
) -> None:
    """The timeout covers headers only; a body within its own deadline is still read."""
    with controller.connect() as sock:
        sock.sendall(request_head("POST", "/api/v1/enroll", {"Content-Length": "2"}))
        time.sleep(HEADER_TIMEOUT_S * 1.5)
        sock.sendall(b"{}")
        status, _headers, _body = read_answer(sock)
    assert status == 422  # the route's answer to an empty enrollment
