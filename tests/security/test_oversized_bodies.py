"""Oversized bodies are refused before they are read, with or without a token.

Found in the security review: bodies were parsed before the token was checked and had
no size cap; a 300 MiB JSON body to ``POST /api/v1/rollouts`` without a token got 401
only after the controller's memory went from 547 to 1,413 MiB (to ``/api/v1/enroll``,
1,715 MiB, and it stayed there). Bodies are now capped per route (1 MiB for JSON, the
upload limits for model uploads) by ``Content-Length`` at once and while they stream.
"""

from __future__ import annotations

import json
import os
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.tokens import Role
from tests.security.http_server import (
    ServedController,
    closed_by_server,
    controller_settings,
    metric,
    read_answer,
    request_head,
    served,
)

MIB = 1024 * 1024
JSON_LIMIT_BYTES = 1 * MIB  # the default
UPLOAD_LIMIT_BYTES = 2 * MIB  # model and validation set, each
# Sent in chunks until the server answers; loopback socket buffers hold a few MiB.
STREAMED_BYTES = 64 * MIB
CHUNK_BYTES = 64 * 1024
# The server's memory may grow by about the limit, never by the body.
MAX_RSS_GROWTH_BYTES = 16 * MIB
MODEL_PART_OPENING = (
    b"--x\r\n"
    b'Content-Disposition: form-data; name="model"; filename="big.onnx"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n"
)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ServedController]:
    settings = controller_settings(
        tmp_path, max_upload_bytes=UPLOAD_LIMIT_BYTES, max_validation_bytes=UPLOAD_LIMIT_BYTES
    )
    with served(settings) as running:
        yield running


def _server_rss_bytes() -> int:
    """The resident memory of this process, which serves the controller in a thread."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _refused_at_once(sock: socket.socket, status: int = 413) -> dict[str, str]:
    answer_status, headers, body = read_answer(sock)
    assert answer_status == status, body
    assert headers["connection"] == "close"
    assert closed_by_server(sock)
    return json.loads(body)  # type: ignore[no-any-return]


def _stream_until_answered(sock: socket.socket, opening: bytes = b"") -> int:
    """Send a chunked body of STREAMED_BYTES until the server answers; the bytes sent."""
    sock.sendall(f"{len(opening):x}\r\n".encode() + opening + b"\r\n" if opening else b"")
    sent = len(opening)
    chunk = f"{CHUNK_BYTES:x}\r\n".encode() + b"[" * CHUNK_BYTES + b"\r\n"
    while sent < STREAMED_BYTES:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(chunk)
        except OSError:  # closed by the server (reset)
            break
        sent += CHUNK_BYTES
    return sent


@pytest.mark.parametrize("path", ["/api/v1/rollouts", "/api/v1/enroll"])
def test_300_mib_json_body_without_token_is_refused_before_it_is_read(
    controller: ServedController, path: str
) -> None:
    head = request_head(
        "POST", path, {"Content-Type": "application/json", "Content-Length": str(300 * MIB)}
    )
    rss_before = _server_rss_bytes()
    with controller.connect() as sock:
        sock.sendall(head + b"[" * CHUNK_BYTES)  # the rest of the 300 MiB never goes
        answer = _refused_at_once(sock)
    assert answer["kind"] == "UploadTooLargeError"
    assert str(JSON_LIMIT_BYTES) in answer["detail"]
    assert _server_rss_bytes() - rss_before < MAX_RSS_GROWTH_BYTES


@pytest.mark.parametrize("path", ["/api/v1/rollouts", "/api/v1/enroll"])
def test_chunked_json_body_without_token_is_cut_off_at_the_limit(
    controller: ServedController, path: str
) -> None:
    head = request_head(
        "POST", path, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    )
    rss_before = _server_rss_bytes()
    with controller.connect() as sock:
        sock.sendall(head)
        sent = _stream_until_answered(sock)
        answer = _refused_at_once(sock)
    assert answer["kind"] == "UploadTooLargeError"
    # The server stopped reading near the limit: the rest of the body never went out.
    assert sent < STREAMED_BYTES / 2
    assert _server_rss_bytes() - rss_before < MAX_RSS_GROWTH_BYTES


def test_upload_over_the_upload_limits_is_refused_before_it_is_read(
    controller: ServedController,
) -> None:
    head = request_head(
        "POST",
        "/api/v1/models/big/versions",
        {
            "Authorization": f"Bearer {controller.token(Role.OPERATOR)}",
            "Content-Type": "multipart/form-data; boundary=x",
            "Content-Length": str(3 * UPLOAD_LIMIT_BYTES),
        },
    )
    with controller.connect() as sock:
        sock.sendall(head)
        answer = _refused_at_once(sock)
    assert answer["kind"] == "UploadTooLargeError"


def test_chunked_upload_past_the_upload_limits_is_cut_off(controller: ServedController) -> None:
    head = request_head(
        "POST",
        "/api/v1/models/big/versions",
        {
            "Authorization": f"Bearer {controller.token(Role.OPERATOR)}",
            "Content-Type": "multipart/form-data; boundary=x",
            "Transfer-Encoding": "chunked",
        },
    )
    with controller.connect() as sock:
        sock.sendall(head)
        sent = _stream_until_answered(sock, MODEL_PART_OPENING)
        answer = _refused_at_once(sock)
    assert answer["kind"] == "UploadTooLargeError"
    assert sent < STREAMED_BYTES / 2
    assert not list((controller.settings.work_dir / "uploads").glob("*"))


@pytest.mark.parametrize("role", [None, Role.VIEWER])
def test_upload_without_an_operator_token_is_refused_before_its_body_is_stored(
    controller: ServedController, role: Role | None
) -> None:
    headers = {
        "Content-Type": "multipart/form-data; boundary=x",
        "Content-Length": str(UPLOAD_LIMIT_BYTES),
    }
    if role is not None:
        headers["Authorization"] = f"Bearer {controller.token(role)}"
    with controller.connect() as sock:
        sock.sendall(request_head("POST", "/api/v1/models/m/versions", headers) + b"-" * 1024)
        answer = _refused_at_once(sock, 401 if role is None else 403)
    assert answer["detail"]
    assert not list((controller.settings.work_dir / "uploads").glob("*"))


def test_upload_over_the_json_limit_still_reaches_the_upload_route(
    controller: ServedController,
) -> None:
    """The upload's own limits, not the JSON one, apply to it, and its body, received
    whole before the route runs, reaches the route intact."""
    model_bytes = 2 * JSON_LIMIT_BYTES
    body = (
        b"--x\r\n"
        b'Content-Disposition: form-data; name="model"; filename="big.bin"\r\n\r\n'
        + b"\0" * model_bytes
        + b"\r\n--x--\r\n"
    )
    head = request_head(
        "POST",
        "/api/v1/models/big/versions",
        {
            "Authorization": f"Bearer {controller.token(Role.OPERATOR)}",
            "Content-Type": "multipart/form-data; boundary=x",
            "Content-Length": str(len(body)),
        },
    )
    with controller.connect() as sock:
        sock.sendall(head + body)
        status, _headers, answer = read_answer(sock)
    # Refused by the route for what it is (a .bin file), not for its size.
    assert status == 422, answer
    assert "bin" in json.loads(answer)["detail"]
    assert not list((controller.settings.work_dir / "uploads").glob("*"))


def test_refused_bodies_are_counted_in_metrics(controller: ServedController) -> None:
    """A refusal never reaches the route, so it is counted apart, for the operator to see."""
    too_large = 'edgefleet_http_requests_refused_total{reason="too_large"}'
    unauthorized = 'edgefleet_http_requests_refused_total{reason="unauthorized"}'
    assert metric(controller, too_large) == 0
    oversized = {"Content-Type": "application/json", "Content-Length": str(300 * MIB)}
    with controller.connect() as sock:
        sock.sendall(request_head("POST", "/api/v1/rollouts", oversized))
        _refused_at_once(sock)
    chunked = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    with controller.connect() as sock:
        sock.sendall(request_head("POST", "/api/v1/enroll", chunked))
        _stream_until_answered(sock)
        _refused_at_once(sock)
    upload = {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": "1024"}
    with controller.connect() as sock:
        sock.sendall(request_head("POST", "/api/v1/models/m/versions", upload) + b"-" * 1024)
        _refused_at_once(sock, 401)
    assert metric(controller, too_large) == 2
    assert metric(controller, unauthorized) == 1
