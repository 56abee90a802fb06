"""An artifact server on a free loopback port that misbehaves on demand.

It serves ``content`` with an ETag and honours ``Range``/``If-Range`` like a CDN would.
Each request first takes the next responder from ``faults`` (if any), so a test scripts
"cut the first attempt, answer 503 to the second, then behave". Every request's headers
are recorded, lower-cased, in ``requests``.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.update.fetcher import FetchLimits, HttpFetcher

Responder = Callable[["ArtifactHandler", "ArtifactServer"], None]
CONTENT_BYTES = 200_000
_RANGE = re.compile(r"bytes=(\d+)-")


@dataclass
class ArtifactServer:
    content: bytes
    url: str = ""
    etag: str | None = '"v1"'
    faults: list[Responder] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


class ArtifactHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    artifact: ArtifactServer  # set on a subclass per server

    def do_GET(self) -> None:
        artifact = self.artifact
        with artifact.lock:
            artifact.requests.append({k.lower(): v for k, v in self.headers.items()})
            respond = artifact.faults.pop(0) if artifact.faults else serve
        try:
            respond(self, artifact)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up; nothing to do

    def send_body(
        self,
        status: int,
        body: bytes,
        *,
        length: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def cut(self) -> None:
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def etag_headers(artifact: ArtifactServer) -> dict[str, str]:
    return {"ETag": artifact.etag} if artifact.etag else {}


def serve(handler: ArtifactHandler, artifact: ArtifactServer) -> None:
    """A well-behaved server: 200, or 206 for a Range whose If-Range still holds, or 416."""
    content = artifact.content
    match = _RANGE.fullmatch(handler.headers.get("Range", ""))
    if_range = handler.headers.get("If-Range")
    if match is None or (if_range is not None and if_range != artifact.etag):
        handler.send_body(200, content, headers=etag_headers(artifact))
        return
    start = int(match[1])
    if start >= len(content):
        handler.send_body(416, b"", headers={"Content-Range": f"bytes */{len(content)}"})
        return
    handler.send_body(
        206,
        content[start:],
        headers={
            "Content-Range": f"bytes {start}-{len(content) - 1}/{len(content)}",
            **etag_headers(artifact),
        },
    )


def cut_after(n_bytes: int) -> Responder:
    """Announce the whole file, send ``n_bytes`` of it, then drop the connection."""

    def respond(handler: ArtifactHandler, artifact: ArtifactServer) -> None:
        handler.send_body(
            200,
            artifact.content[:n_bytes],
            length=len(artifact.content),
            headers=etag_headers(artifact),
        )
        handler.cut()

    return respond


def ignore_range(handler: ArtifactHandler, artifact: ArtifactServer) -> None:
    handler.send_body(200, artifact.content, headers=etag_headers(artifact))


def status(code: int) -> Responder:
    def respond(handler: ArtifactHandler, artifact: ArtifactServer) -> None:
        handler.send_body(code, b"")

    return respond


def oversized(extra_bytes: int) -> Responder:
    """The file and then some, with an honest Content-Length for all of it."""

    def respond(handler: ArtifactHandler, artifact: ArtifactServer) -> None:
        handler.send_body(200, artifact.content + bytes(extra_bytes))

    return respond


def endless_chunked(handler: ArtifactHandler, artifact: ArtifactServer) -> None:
    """Chunked encoding, no length at all, and bytes until the client hangs up."""
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = bytes(16 * 1024)
    for _ in range(1024):  # 16 MiB at most, so a broken client cannot hang the test
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    handler.wfile.write(b"0\r\n\r\n")


def trickle(interval_s: float) -> Responder:
    """One byte every ``interval_s``: never idle long enough for a read timeout."""

    def respond(handler: ArtifactHandler, artifact: ArtifactServer) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(artifact.content)))
        handler.end_headers()
        for byte in artifact.content[:200]:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(interval_s)
        handler.cut()

    return respond


def stall(seconds: float) -> Responder:
    """Headers and a few bytes, then silence."""

    def respond(handler: ArtifactHandler, artifact: ArtifactServer) -> None:
        handler.send_body(200, artifact.content[:10], length=len(artifact.content))
        handler.wfile.flush()
        time.sleep(seconds)
        handler.cut()

    return respond


@pytest.fixture
def artifact_server() -> Iterator[ArtifactServer]:
    artifact = ArtifactServer(content=hashlib.sha256(b"seed").digest() * (CONTENT_BYTES // 32))
    handler = type("BoundHandler", (ArtifactHandler,), {"artifact": artifact})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    artifact.url = f"http://{host!s}:{port}/artifacts/model.onnx"
    try:
        yield artifact
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class RecordedSleep:
    """Back-off that returns at once and remembers what it was asked to wait."""

    delays_s: list[float] = field(default_factory=list)

    async def __call__(self, delay_s: float) -> None:
        self.delays_s.append(delay_s)


@pytest.fixture
def sleep() -> RecordedSleep:
    return RecordedSleep()


TEST_LIMITS = FetchLimits(
    min_deadline_s=10.0,
    read_timeout_s=5.0,
    connect_timeout_s=2.0,
    max_attempts=3,
    backoff_base_s=0.01,
    backoff_max_s=0.05,
    free_disk_margin_bytes=0,
)


@pytest.fixture
def fetcher(sleep: RecordedSleep) -> HttpFetcher:
    return HttpFetcher(TEST_LIMITS, sleep=sleep)


@pytest.fixture
def destination(tmp_path: Path) -> Path:
    return tmp_path / "model.onnx"
