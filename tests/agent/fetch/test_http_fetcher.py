"""HttpFetcher against a real HTTP server that misbehaves on demand.

Each test names the attack or failure it checks and asserts both the error and what is
left on disk: the destination only ever appears complete and verified, and no ``.part``
file survives a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.errors import (
    ConnectionFailedError,
    DownloadDeadlineError,
    DownloadTooLargeError,
    HashMismatchError,
    HttpStatusError,
    InsufficientDiskError,
    LengthMismatchError,
    TransportTimeoutError,
)
from agent.update.fetcher import FetchLimits, HttpFetcher
from tests.agent.fetch.conftest import (
    TEST_LIMITS,
    ArtifactServer,
    RecordedSleep,
    cut_after,
    endless_chunked,
    ignore_range,
    oversized,
    stall,
    status,
    trickle,
)


def fetch(
    fetcher: HttpFetcher,
    server: ArtifactServer,
    destination: Path,
    *,
    expected: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> None:
    signed = server.content if expected is None else expected
    asyncio.run(
        fetcher.download(
            server.url,
            destination,
            expected_length=len(signed),
            expected_sha256=hashlib.sha256(signed).hexdigest(),
            headers=headers,
        )
    )


def part_of(destination: Path) -> Path:
    return destination.with_name(destination.name + ".part")


def assert_nothing_left(destination: Path) -> None:
    assert not destination.exists()
    assert not part_of(destination).exists()


def test_download_writes_the_signed_bytes(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    fetch(fetcher, artifact_server, destination, headers={"Authorization": "Bearer t"})

    assert destination.read_bytes() == artifact_server.content
    assert not part_of(destination).exists()
    [request] = artifact_server.requests
    assert request["authorization"] == "Bearer t"
    assert request["accept-encoding"] == "identity"
    assert "range" not in request


def test_cut_connection_resumes_with_range_and_if_range(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    artifact_server.faults = [cut_after(50_000)]

    fetch(fetcher, artifact_server, destination)

    assert destination.read_bytes() == artifact_server.content
    first, second = artifact_server.requests
    assert "range" not in first
    assert second["range"] == "bytes=50000-"
    assert second["if-range"] == artifact_server.etag


def test_server_ignoring_range_restarts_from_zero(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    artifact_server.faults = [cut_after(50_000), ignore_range]

    fetch(fetcher, artifact_server, destination)

    assert destination.read_bytes() == artifact_server.content
    assert artifact_server.requests[1]["range"] == "bytes=50000-"


def test_file_changed_between_attempts_is_not_spliced(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    new_content = bytes(reversed(artifact_server.content))

    def cut_then_replace(handler: Any, server: ArtifactServer) -> None:
        cut_after(50_000)(handler, server)
        server.content, server.etag = new_content, '"v2"'

    artifact_server.faults = [cut_then_replace]

    fetch(fetcher, artifact_server, destination, expected=new_content)

    # If-Range "v1" no longer holds, so the server sent all of v2 rather than its tail.
    assert destination.read_bytes() == new_content


def test_range_past_the_end_starts_over(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    artifact_server.faults = [cut_after(50_000), status(416)]

    fetch(fetcher, artifact_server, destination)

    assert destination.read_bytes() == artifact_server.content
    assert "range" not in artifact_server.requests[2]


def test_partial_content_from_the_wrong_offset_is_not_appended(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    def whole_file_as_206(handler: Any, server: ArtifactServer) -> None:
        total = len(server.content)
        handler.send_body(
            206, server.content, headers={"Content-Range": f"bytes 0-{total - 1}/{total}"}
        )

    artifact_server.faults = [cut_after(50_000), whole_file_as_206]

    fetch(fetcher, artifact_server, destination)

    assert destination.read_bytes() == artifact_server.content
    assert "range" not in artifact_server.requests[2]


def test_connection_cut_on_every_attempt_gives_up_and_cleans_up(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    artifact_server.faults = [cut_after(1_000)] * TEST_LIMITS.max_attempts

    with pytest.raises(ConnectionFailedError, match="RemoteProtocolError"):
        fetch(fetcher, artifact_server, destination)

    assert len(artifact_server.requests) == TEST_LIMITS.max_attempts
    assert_nothing_left(destination)


def test_endless_data_with_announced_length_is_refused(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    artifact_server.faults = [oversized(1)]

    with pytest.raises(DownloadTooLargeError, match="200001"):
        fetch(fetcher, artifact_server, destination)

    assert_nothing_left(destination)
    assert len(artifact_server.requests) == 1


def test_endless_data_without_length_is_cut_at_the_signed_length(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    artifact_server.faults = [endless_chunked]

    with pytest.raises(DownloadTooLargeError, match="200000"):
        fetch(fetcher, artifact_server, destination)

    assert_nothing_left(destination)
    assert len(artifact_server.requests) == 1


def test_trickling_server_hits_the_deadline(
    sleep: RecordedSleep, artifact_server: ArtifactServer, destination: Path
) -> None:
    limits = FetchLimits(
        min_rate_bytes_per_s=10**9, min_deadline_s=0.3, read_timeout_s=5.0, max_attempts=3
    )
    artifact_server.faults = [trickle(0.05)]

    with pytest.raises(DownloadDeadlineError, match=r"deadline of 0\.3 s"):
        fetch(HttpFetcher(limits, sleep=sleep), artifact_server, destination)

    assert_nothing_left(destination)
    assert len(artifact_server.requests) == 1


def test_wrong_content_is_a_hash_mismatch(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    signed = bytes(len(artifact_server.content))

    with pytest.raises(HashMismatchError, match=hashlib.sha256(signed).hexdigest()):
        fetch(fetcher, artifact_server, destination, expected=signed)

    assert_nothing_left(destination)


def test_short_content_is_a_length_mismatch(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    signed = artifact_server.content + b"tail"

    with pytest.raises(LengthMismatchError, match=r"200000 bytes.*200004"):
        fetch(fetcher, artifact_server, destination, expected=signed)

    assert_nothing_left(destination)
    assert len(artifact_server.requests) == 1


def test_failed_download_leaves_the_old_destination_alone(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path
) -> None:
    destination.write_bytes(b"the model that serves")

    with pytest.raises(HashMismatchError):
        fetch(fetcher, artifact_server, destination, expected=bytes(len(artifact_server.content)))

    assert destination.read_bytes() == b"the model that serves"
    assert not part_of(destination).exists()


@pytest.mark.parametrize("code", [401, 403, 404, 410])
def test_client_errors_are_final_and_not_retried(
    fetcher: HttpFetcher,
    sleep: RecordedSleep,
    artifact_server: ArtifactServer,
    destination: Path,
    code: int,
) -> None:
    artifact_server.faults = [status(code)]

    with pytest.raises(HttpStatusError, match=str(code)) as info:
        fetch(fetcher, artifact_server, destination)

    assert info.value.status == code
    assert len(artifact_server.requests) == 1
    assert sleep.delays_s == []
    assert_nothing_left(destination)


def test_server_errors_are_retried_with_backoff(
    fetcher: HttpFetcher, sleep: RecordedSleep, artifact_server: ArtifactServer, destination: Path
) -> None:
    artifact_server.faults = [status(503), status(503)]

    fetch(fetcher, artifact_server, destination)

    assert destination.read_bytes() == artifact_server.content
    assert len(artifact_server.requests) == 3
    assert len(sleep.delays_s) == 2
    assert all(0 <= delay <= TEST_LIMITS.backoff_max_s for delay in sleep.delays_s)


@pytest.mark.parametrize("code", [408, 429, 500, 503])
def test_retryable_status_gives_up_after_max_attempts(
    fetcher: HttpFetcher, artifact_server: ArtifactServer, destination: Path, code: int
) -> None:
    artifact_server.faults = [status(code)] * 10

    with pytest.raises(HttpStatusError) as info:
        fetch(fetcher, artifact_server, destination)

    assert info.value.status == code
    assert info.value.retryable
    assert len(artifact_server.requests) == TEST_LIMITS.max_attempts
    assert_nothing_left(destination)


def test_connection_refused_is_connection_failed_after_retries(
    fetcher: HttpFetcher, sleep: RecordedSleep, artifact_server: ArtifactServer, destination: Path
) -> None:
    artifact_server.url = "http://127.0.0.1:1/model.onnx"  # nothing listens on port 1

    with pytest.raises(ConnectionFailedError):
        fetch(fetcher, artifact_server, destination)

    assert len(sleep.delays_s) == TEST_LIMITS.max_attempts - 1
    assert_nothing_left(destination)


def test_silent_server_is_a_transport_timeout_after_retries(
    sleep: RecordedSleep, artifact_server: ArtifactServer, destination: Path
) -> None:
    limits = FetchLimits(read_timeout_s=0.2, max_attempts=2, backoff_base_s=0.0)
    artifact_server.faults = [stall(1.0), stall(1.0)]

    with pytest.raises(TransportTimeoutError, match="ReadTimeout"):
        fetch(HttpFetcher(limits, sleep=sleep), artifact_server, destination)

    assert artifact_server.requests[1]["range"] == "bytes=10-"
    assert_nothing_left(destination)


def test_insufficient_disk_fails_before_any_request(
    fetcher: HttpFetcher,
    artifact_server: ArtifactServer,
    destination: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = shutil.disk_usage

    def nearly_full(path: Any) -> Any:
        return real(path)._replace(free=len(artifact_server.content) - 1)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)

    with pytest.raises(InsufficientDiskError, match="199999 bytes free"):
        fetch(fetcher, artifact_server, destination)

    assert artifact_server.requests == []
    assert_nothing_left(destination)


def test_disk_margin_counts_towards_the_space_needed(
    artifact_server: ArtifactServer, destination: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: real(path)._replace(free=len(artifact_server.content))
    )
    fetcher = HttpFetcher(FetchLimits(free_disk_margin_bytes=1))

    with pytest.raises(InsufficientDiskError, match="a margin of 1"):
        fetch(fetcher, artifact_server, destination)

    assert artifact_server.requests == []


def test_a_download_leaves_room_for_the_one_another_model_has_under_way(
    sleep: RecordedSleep, artifact_server: ArtifactServer, tmp_path: Path
) -> None:
    size = len(artifact_server.content)
    # Room for one artifact and a half: each download alone fits, two at once do not.
    fetcher = HttpFetcher(
        replace(TEST_LIMITS, free_disk_margin_bytes=0),
        sleep=sleep,
        free_bytes=lambda _directory: size + size // 2,
    )
    artifact_server.faults = [trickle(0.01)]  # the first stays under way
    first_destination, second_destination = tmp_path / "a.onnx", tmp_path / "b.onnx"

    def download(destination: Path) -> Any:
        return fetcher.download(
            artifact_server.url,
            destination,
            expected_length=size,
            expected_sha256=artifact_server.sha256,
        )

    async def two_models() -> None:
        first = asyncio.create_task(download(first_destination))
        while not part_of(first_destination).exists():
            await asyncio.sleep(0.01)
        with pytest.raises(InsufficientDiskError, match="promised to other downloads"):
            await download(second_destination)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await download(second_destination)  # the promise ended with the download

    asyncio.run(two_models())

    assert second_destination.read_bytes() == artifact_server.content
    assert_nothing_left(first_destination)
