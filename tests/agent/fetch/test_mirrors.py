"""HttpFetcher with artifact mirrors, against real local HTTP servers.

Mirrors are tried in order, then the controller's URL; a mirror is trusted for nothing:
each test names the failure of a mirror it checks, and asserts where the bytes came
from, what each server was asked, and that a rejected mirror's bytes never reach the
destination nor seed a resumed download.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.errors import HttpStatusError
from agent.update.fetcher import DownloadOutcome, FetchLimits, HttpFetcher
from tests.agent.fetch.conftest import (
    CONTENT_BYTES,
    TEST_LIMITS,
    ArtifactHandler,
    ArtifactServer,
    RecordedSleep,
    cut_after,
    oversized,
    status,
    trickle,
)
from tests.brokers import free_port

CONTENT = hashlib.sha256(b"mirrored").digest() * (CONTENT_BYTES // 32)
TOKEN_HEADERS = {"Authorization": "Bearer device-secret"}

StartServer = Callable[..., ArtifactServer]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start artifact servers on free loopback ports; all stop when the test ends."""
    running: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(content: bytes = CONTENT) -> ArtifactServer:
        artifact = ArtifactServer(content=content)
        handler = type("BoundHandler", (ArtifactHandler,), {"artifact": artifact})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        running.append((server, thread))
        host, port = server.server_address[:2]
        artifact.url = f"http://{host!s}:{port}/sha256/{artifact.sha256}"
        return artifact

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def fetch(
    fetcher: HttpFetcher, controller: ArtifactServer, destination: Path, mirrors: list[str]
) -> DownloadOutcome:
    return asyncio.run(
        fetcher.download(
            controller.url,
            destination,
            expected_length=len(CONTENT),
            expected_sha256=hashlib.sha256(CONTENT).hexdigest(),
            headers=TOKEN_HEADERS,
            mirrors=mirrors,
        )
    )


def flipped(content: bytes) -> bytes:
    """The same length, a few bytes changed: only the hash can tell."""
    middle = len(content) // 2
    return (
        content[:middle]
        + bytes(b ^ 0xFF for b in content[middle : middle + 8])
        + (content[middle + 8 :])
    )


def test_first_mirror_serves_and_the_controller_is_not_asked(
    fetcher: HttpFetcher, start_server: StartServer, destination: Path
) -> None:
    controller, mirror = start_server(), start_server()

    outcome = fetch(fetcher, controller, destination, [mirror.url])

    assert destination.read_bytes() == CONTENT
    assert outcome.source == mirror.url
    assert outcome.rejected == ()
    assert controller.requests == []


def test_a_mirror_never_sees_the_device_token(
    fetcher: HttpFetcher, start_server: StartServer, destination: Path
) -> None:
    controller, mirror = start_server(), start_server()
    mirror.faults = [status(404)]

    fetch(fetcher, controller, destination, [mirror.url])

    assert [r.get("authorization") for r in mirror.requests] == [None]
    assert [r.get("authorization") for r in controller.requests] == ["Bearer device-secret"]


def test_mirrors_are_tried_in_order(
    fetcher: HttpFetcher, start_server: StartServer, destination: Path
) -> None:
    controller, first, second, third = (start_server() for _ in range(4))
    first.faults = [status(404)]

    outcome = fetch(fetcher, controller, destination, [first.url, second.url, third.url])

    assert outcome.source == second.url
    assert [r.reason for r in outcome.rejected] == ["http_status"]
    assert (len(first.requests), len(second.requests), len(third.requests)) == (1, 1, 0)
    assert controller.requests == []


def test_refused_connection_moves_to_the_controller(
    fetcher: HttpFetcher, start_server: StartServer, destination: Path
) -> None:
    controller = start_server()
    dead_mirror = f"http://127.0.0.1:{free_port()}/sha256/{controller.sha256}"

    outcome = fetch(fetcher, controller, destination, [dead_mirror])

    assert destination.read_bytes() == CONTENT
    assert outcome.source == controller.url
    assert [r.reason for r in outcome.rejected] == ["connection_failed"]
    assert fetcher.mirror_rejections[dead_mirror] == 1


def test_mirror_server_errors_are_retried_then_the_next_source_serves(
    sleep: RecordedSleep, start_server: StartServer, destination: Path
) -> None:
    limits = FetchLimits(**{**TEST_LIMITS.__dict__, "mirror_max_attempts": 2})
    fetcher = HttpFetcher(limits, sleep=sleep)
    controller, mirror = start_server(), start_server()
    mirror.faults = [status(503)] * 5

    outcome = fetch(fetcher, controller, destination, [mirror.url])

    assert len(mirror.requests) == limits.mirror_max_attempts
    assert [r.reason for r in outcome.rejected] == ["http_status"]
    assert outcome.source == controller.url


def test_corrupt_mirror_is_a_hash_mismatch_and_its_bytes_are_discarded(
    fetcher: HttpFetcher, start_server: StartServer, destination: Path
) -> None:
    controller, corrupt = start_server(), start_server(flipped(CONTENT))
    corrupt.url = corrupt.url.replace(corrupt.sha256, controller.sha256)

    outcome = fetch(fetcher, controller, destination, [corrupt.url])

    assert destination.read_bytes() == CONTENT
    assert [r.reason for r in outcome.rejected] == ["hash_mismatch"]
    assert fetcher.mirror_rejections == {corrupt.url: 1}
    # The controller's download starts from byte 0: nothing of the mirror's is resumed.
    assert [r.get("range") for r in controller.requests] == [None]


def test_mirror_cut_on_every_attempt_never_seeds_the_controller_download(
    fetcher: HttpFetcher, start_server: StartServer, destination: Path
) -> None:
    controller, mirror = start_server(), start_server()
    mirror.faults = [cut_after(50_000)] * TEST_LIMITS.mirror_max_attempts

    outcome = fetch(fetcher, controller, destination, [mirror.url])

    assert destination.read_bytes() == CONTENT
    assert [r.reason for r in outcome.rejected] == ["connection_failed"]
    # The mirror resumed its own bytes; the controller was asked for the whole file.
    assert [r.get("range") for r in mirror.requests[1:]] == ["bytes=50000-"] * (
        TEST_LIMITS.mirror_max_attempts - 1
    )
    assert [r.get("range") for r in controller.requests] == [None]


def test_short_mirror_copy_is_a_length_mismatch(
    fetcher: HttpFetcher, start_server: StartServer, destination: Path
) -> None:
    controller, short = start_server(), start_server(CONTENT[:-1])

    outcome = fetch(fetcher, controller, destination, [short.url])

    assert [r.reason for r in outcome.rejected] == ["length_mismatch"]
    assert outcome.source == controller.url


def test_mirror_sending_more_than_the_signed_length_is_cut_off(
    fetcher: HttpFetcher, start_server: StartServer, destination: Path
) -> None:
    controller, mirror = start_server(), start_server()
    mirror.faults = [oversized(1)]

    outcome = fetch(fetcher, controller, destination, [mirror.url])

    assert [r.reason for r in outcome.rejected] == ["download_too_large"]
    assert destination.read_bytes() == CONTENT


def test_trickling_mirror_leaves_the_controller_its_share_of_the_deadline(
    sleep: RecordedSleep, start_server: StartServer, destination: Path
) -> None:
    limits = FetchLimits(
        **{**TEST_LIMITS.__dict__, "min_rate_bytes_per_s": 10**9, "min_deadline_s": 1.0}
    )
    fetcher = HttpFetcher(limits, sleep=sleep)
    controller, mirror = start_server(), start_server()
    mirror.faults = [trickle(0.05)]

    outcome = fetch(fetcher, controller, destination, [mirror.url])

    assert [r.reason for r in outcome.rejected] == ["download_deadline"]
    assert outcome.source == controller.url
    assert destination.read_bytes() == CONTENT


def test_every_source_failing_raises_the_controllers_error_and_leaves_nothing(
    fetcher: HttpFetcher, start_server: StartServer, destination: Path
) -> None:
    controller, mirror = start_server(), start_server(flipped(CONTENT))
    controller.faults = [status(404)]

    with pytest.raises(HttpStatusError, match="404"):
        fetch(fetcher, controller, destination, [mirror.url])

    assert not destination.exists()
    assert not destination.with_name(destination.name + ".part").exists()
    assert fetcher.mirror_rejections[mirror.url] == 1
