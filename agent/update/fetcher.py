"""Download an artifact over HTTP, capped at its signed length, within a deadline.

python-tuf's fetcher is the model: one tiny ``Fetcher`` interface, and an ``HttpFetcher``
that knows httpx. The caller passes the length and SHA-256 the release signed; the
fetcher never trusts the server about either.

Invariants:
- nothing is written, and no request is sent, unless the destination's file system has
  ``expected_length + free_disk_margin_bytes`` free beyond what the fetcher's other
  downloads under way (another model's update) still have to write;
- bytes go to ``<destination>.part`` only; never more than ``expected_length`` of them
  (a server that sends more is cut off with ``DownloadTooLargeError``, an endless-data
  attack);
- the whole download, retries and back-off included, ends within
  ``max(min_deadline_s, expected_length / min_rate_bytes_per_s)`` (measured with
  ``time.monotonic``), or ``DownloadDeadlineError`` (a slow-retrieval attack: a server that
  trickles a byte now and then never trips a per-read timeout);
- ``destination`` appears only complete, with the signed length and hash: the ``.part``
  file is fsync'd, renamed over it, and the directory fsync'd; on any failure the
  ``.part`` file is removed and ``destination`` is left as it was;
- a cut connection, a timeout, a 408, 429 or 5xx is retried with exponential back-off and
  jitter, resuming with ``Range`` (and ``If-Range`` when the server named a strong ETag);
  other 4xx are final. Transport failures surface as ``TransportError`` leaves only once
  ``max_attempts`` is spent; httpx exceptions are translated here and nowhere else.

Each call starts from zero: a ``.part`` left by an earlier process is overwritten, since
nothing vouches for its bytes.

Mirrors (docs/artifact-mirrors.md): a call may name mirror URLs, tried in order before
``url`` (the controller), under the same deadline, ``.part`` file and length cap:
- a mirror gets no caller ``headers`` (they carry the device's token for the controller)
  and at most ``mirror_max_attempts`` attempts within an equal share of the time left
  (the time left divided by the sources left), so a dead or trickling mirror leaves the
  sources after it time to finish;
- a mirror that fails in transport, or whose body has the wrong length or hash, is
  rejected: its bytes are discarded (the ``.part`` file restarts from byte 0, so no
  source ever resumes from them), the rejection is logged, counted per mirror in
  ``HttpFetcher.mirror_rejections`` and returned in ``DownloadOutcome.rejected``, and the
  next source starts; disk errors end the download, since no source would help;
- the last source, the controller, is handled exactly as a call without mirrors.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import random
import re
import shutil
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import httpx

from durable import fsync_dir
from protocol import backoff_delay_s

from ..errors import (
    AgentError,
    ArtifactError,
    ConfigurationError,
    ConnectionFailedError,
    DownloadDeadlineError,
    DownloadTooLargeError,
    HashMismatchError,
    HttpStatusError,
    InsufficientDiskError,
    LengthMismatchError,
    StoreError,
    TransportError,
    TransportTimeoutError,
)
from ..tls import default_tls_context

__all__ = ["DownloadOutcome", "FetchLimits", "Fetcher", "HttpFetcher", "MirrorRejection", "Sleep"]

logger = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# Statuses worth another attempt besides 5xx: the server or a proxy may answer differently
# later; after a 416 the next attempt starts over without a Range.
_RETRYABLE_STATUSES = frozenset({408, 416, 429})
_CONTENT_RANGE = re.compile(r"bytes (?P<start>\d+)-(?P<end>\d+)/(?P<total>\d+|\*)")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Jitter needs no secrecy, but the system source keeps linters and reviewers calm.
_JITTER = random.SystemRandom()


@dataclass(frozen=True)
class FetchLimits:
    """How long, how often and into how little disk a download may go."""

    min_rate_bytes_per_s: int = 64 * 1024
    min_deadline_s: float = 60.0
    read_timeout_s: float = 20.0
    connect_timeout_s: float = 10.0
    max_attempts: int = 10
    # A mirror is one of several sources: a few attempts, then the next source.
    mirror_max_attempts: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    free_disk_margin_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        positive = {
            "min_rate_bytes_per_s": self.min_rate_bytes_per_s,
            "min_deadline_s": self.min_deadline_s,
            "read_timeout_s": self.read_timeout_s,
            "connect_timeout_s": self.connect_timeout_s,
            "max_attempts": self.max_attempts,
            "mirror_max_attempts": self.mirror_max_attempts,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigurationError(f"FetchLimits.{name} must be positive, not {value}")
        for name, value in {
            "backoff_base_s": self.backoff_base_s,
            "backoff_max_s": self.backoff_max_s,
            "free_disk_margin_bytes": self.free_disk_margin_bytes,
        }.items():
            if value < 0:
                raise ConfigurationError(f"FetchLimits.{name} must not be negative, not {value}")

    def deadline_s(self, expected_length: int) -> float:
        return max(self.min_deadline_s, expected_length / self.min_rate_bytes_per_s)


@dataclass(frozen=True)
class MirrorRejection:
    """A mirror that did not deliver the artifact, and why (an ``AgentError`` reason)."""

    mirror: str  # the URL without credentials or query
    reason: str
    message: str


@dataclass(frozen=True)
class DownloadOutcome:
    """Where the bytes came from, and the mirrors rejected before that source."""

    source: str  # the URL without credentials or query
    rejected: tuple[MirrorRejection, ...] = ()


class Fetcher(Protocol):
    """Downloads one file of known length and hash, from the first of ``mirrors`` that
    delivers it, else from ``url``; raises an ``AgentError`` when none does."""

    async def download(
        self,
        url: str,
        destination: Path,
        *,
        expected_length: int,
        expected_sha256: str,
        headers: Mapping[str, str] | None = None,
        mirrors: Sequence[str] = (),
    ) -> DownloadOutcome: ...


@dataclass(frozen=True)
class _Source:
    url: str
    headers: dict[str, str]
    max_attempts: int
    is_mirror: bool


@dataclass
class _Partial:
    """The ``.part`` file and what is known about the bytes in it."""

    file: BinaryIO
    have: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    etag: str | None = None

    def restart(self) -> None:
        self.file.seek(0)
        self.file.truncate()
        self.have = 0
        self.digest = hashlib.sha256()
        self.etag = None

    def write(self, chunk: bytes) -> None:
        try:
            self.file.write(chunk)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise InsufficientDiskError(f"disk full after {self.have} bytes") from exc
            raise StoreError(f"cannot write the download: {exc}") from exc
        self.digest.update(chunk)
        self.have += len(chunk)


class HttpFetcher:
    """``Fetcher`` over httpx.

    Without a ``client``, each download opens and closes its own ``httpx.AsyncClient``;
    a client passed in belongs to the caller. ``sleep`` is what back-off waits with
    (tests pass one that returns at once).
    """

    def __init__(
        self,
        limits: FetchLimits | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        sleep: Sleep = asyncio.sleep,
        free_bytes: Callable[[Path], int] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.limits = limits or FetchLimits()
        self._client = client
        # The device's pinned CA (agent.tls.device_tls_context); None: the system's CAs.
        self._tls_context = tls_context
        self._sleep = sleep
        # How much a directory can still take (the simulator gives devices small disks).
        self._free_bytes = free_bytes or _disk_free_bytes
        # Downloads under way (their .part file and full length): the models of a device
        # download at the same time, and each must leave room for what the others still
        # have to write.
        self._in_flight: dict[Path, int] = {}
        # Rejections per mirror (redacted URL) over this fetcher's life, for operators.
        self.mirror_rejections: Counter[str] = Counter()
        self._timeout = httpx.Timeout(
            self.limits.read_timeout_s,
            connect=self.limits.connect_timeout_s,
        )

    async def download(
        self,
        url: str,
        destination: Path,
        *,
        expected_length: int,
        expected_sha256: str,
        headers: Mapping[str, str] | None = None,
        mirrors: Sequence[str] = (),
    ) -> DownloadOutcome:
        if expected_length < 0 or not _SHA256_HEX.fullmatch(expected_sha256):
            raise ConfigurationError(
                f"download needs a length >= 0 and a lowercase hex SHA-256, "
                f"not {expected_length} and {expected_sha256!r}"
            )
        part = destination.with_suffix(destination.suffix + ".part")
        self._verify_free_disk(destination.parent, expected_length)
        self._in_flight[part] = expected_length
        deadline_s = self.limits.deadline_s(expected_length)
        started = time.monotonic()
        sources = [
            _Source(mirror, {}, self.limits.mirror_max_attempts, is_mirror=True)
            for mirror in mirrors
        ]
        sources.append(_Source(url, dict(headers or {}), self.limits.max_attempts, is_mirror=False))
        rejected: list[MirrorRejection] = []
        try:
            with part.open("wb") as file:
                partial = _Partial(file)
                timeout = asyncio.timeout(deadline_s)
                try:
                    async with timeout, self._session() as client:
                        source = await self._download_from_sources(
                            client,
                            sources,
                            partial,
                            rejected,
                            expected_length=expected_length,
                            expected_sha256=expected_sha256,
                            deadline_at=started + deadline_s,
                        )
                except TimeoutError as exc:
                    if not timeout.expired():
                        raise
                    raise DownloadDeadlineError(
                        f"{_redacted(url)}: {partial.have} of {expected_length} bytes after "
                        f"the deadline of {deadline_s:.1f} s"
                        + (f" ({len(rejected)} mirrors rejected)" if rejected else "")
                    ) from exc
            await asyncio.to_thread(_publish, part, destination)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        finally:
            self._in_flight.pop(part, None)
        where = _redacted(source.url)
        logger.info(
            "downloaded %s (%d bytes) in %.1f s", where, expected_length, time.monotonic() - started
        )
        return DownloadOutcome(where, tuple(rejected))

    async def _download_from_sources(
        self,
        client: httpx.AsyncClient,
        sources: list[_Source],
        partial: _Partial,
        rejected: list[MirrorRejection],
        *,
        expected_length: int,
        expected_sha256: str,
        deadline_at: float,
    ) -> _Source:
        """Each mirror in turn, then the controller; returns the source that delivered."""
        for index, source in enumerate(sources):
            if not source.is_mirror:
                await self._download_with_retries(
                    client,
                    source.url,
                    partial,
                    expected_length=expected_length,
                    headers=source.headers,
                    deadline_at=deadline_at,
                    max_attempts=source.max_attempts,
                )
                _verify_body(partial, expected_length, expected_sha256)
                return source
            share_s = (deadline_at - time.monotonic()) / (len(sources) - index)
            budget = asyncio.timeout(share_s)
            try:
                async with budget:
                    await self._download_with_retries(
                        client,
                        source.url,
                        partial,
                        expected_length=expected_length,
                        headers=source.headers,
                        deadline_at=time.monotonic() + share_s,
                        max_attempts=source.max_attempts,
                    )
                _verify_body(partial, expected_length, expected_sha256)
                return source
            except TimeoutError as exc:
                if not budget.expired():
                    raise
                error: AgentError = DownloadDeadlineError(
                    f"{partial.have} of {expected_length} bytes after its share of {share_s:.1f} s"
                )
                error.__cause__ = exc
            except (InsufficientDiskError, StoreError):
                raise
            except (TransportError, ArtifactError, ConfigurationError) as exc:
                error = exc
            self._reject_mirror(source, error, partial, rejected)
        raise AssertionError("the controller is always the last source")  # pragma: no cover

    def _reject_mirror(
        self,
        source: _Source,
        error: AgentError,
        partial: _Partial,
        rejected: list[MirrorRejection],
    ) -> None:
        """Forget every byte the mirror sent, and say which mirror failed how."""
        where = _redacted(source.url)
        partial.restart()
        self.mirror_rejections[where] += 1
        rejected.append(MirrorRejection(where, error.reason, str(error)))
        # A hash mismatch is a mirror serving wrong bytes: an operator must hear of it.
        log = logger.error if isinstance(error, HashMismatchError) else logger.warning
        log("mirror %s rejected (%s): %s; trying the next source", where, error.reason, error)

    def _verify_free_disk(self, directory: Path, expected_length: int) -> None:
        needed = expected_length + self.limits.free_disk_margin_bytes
        try:
            free = self._free_bytes(directory)
        except OSError as exc:
            raise StoreError(f"cannot read the free space of {directory}: {exc}") from exc
        promised = sum(max(0, length - _size_of(part)) for part, length in self._in_flight.items())
        if free - promised < needed:
            others = f", of which {promised} are promised to other downloads" if promised else ""
            raise InsufficientDiskError(
                f"{directory} has {free} bytes free{others}; the download needs {needed} "
                f"({expected_length} + a margin of {self.limits.free_disk_margin_bytes})"
            )

    async def _download_with_retries(
        self,
        client: httpx.AsyncClient,
        url: str,
        partial: _Partial,
        *,
        expected_length: int,
        headers: dict[str, str],
        deadline_at: float,
        max_attempts: int,
    ) -> None:
        limits = self.limits
        for attempt in range(1, max_attempts + 1):
            try:
                await self._attempt(client, url, partial, expected_length, headers)
            except HttpStatusError as exc:
                if not _is_retryable_status(exc.status) or attempt == max_attempts:
                    raise
                error: TransportError = exc
            except TransportError as exc:
                if attempt == max_attempts:
                    raise
                error = exc
            else:
                return
            delay_s = backoff_delay_s(
                attempt - 1,
                initial_s=limits.backoff_base_s,
                max_s=limits.backoff_max_s,
                rng=_JITTER,
            )
            if time.monotonic() + delay_s >= deadline_at:
                # The next attempt could not finish in time; say why it failed, not when.
                raise error
            logger.warning(
                "download attempt %d of %d failed (%s, %d bytes so far); retrying in %.2f s",
                attempt,
                max_attempts,
                error,
                partial.have,
                delay_s,
            )
            await self._sleep(delay_s)

    async def _attempt(
        self,
        client: httpx.AsyncClient,
        url: str,
        partial: _Partial,
        expected_length: int,
        extra_headers: dict[str, str],
    ) -> None:
        headers = httpx.Headers(extra_headers)
        # Count the bytes on the wire: no decompression, so no bomb and exact Range offsets.
        headers["Accept-Encoding"] = "identity"
        if partial.have:
            headers["Range"] = f"bytes={partial.have}-"
            if partial.etag is not None:
                headers["If-Range"] = partial.etag
        try:
            async with client.stream(
                "GET", url, headers=headers, timeout=self._timeout, follow_redirects=True
            ) as response:
                _accept_response(response, partial, expected_length)
                async for chunk in response.aiter_raw():
                    if partial.have + len(chunk) > expected_length:
                        raise DownloadTooLargeError(
                            f"{_redacted(url)}: the server sent more than the signed "
                            f"{expected_length} bytes"
                        )
                    partial.write(chunk)
        except httpx.TimeoutException as exc:
            raise TransportTimeoutError(f"{_redacted(url)}: {type(exc).__name__}") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ConfigurationError(f"{_redacted(url)}: {exc}") from exc
        except (httpx.TransportError, httpx.TooManyRedirects) as exc:
            raise ConnectionFailedError(f"{_redacted(url)}: {type(exc).__name__} {exc}") from exc

    def _session(self) -> httpx.AsyncClient | _Borrowed:
        if self._client is None:
            return httpx.AsyncClient(verify=self._tls_context or default_tls_context())
        return _Borrowed(self._client)


class _Borrowed:
    """A caller's client as an ``async with`` that leaves it open."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def __aenter__(self) -> httpx.AsyncClient:
        return self._client

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def _is_retryable_status(status: int) -> bool:
    return status in _RETRYABLE_STATUSES or status >= 500


def _accept_response(response: httpx.Response, partial: _Partial, expected_length: int) -> None:
    """Decide what the status means for the ``.part`` file; raise when it is no body to keep."""
    status = response.status_code
    if status == 200:
        if partial.have:
            logger.info("server ignored the Range request; starting over from byte 0")
            partial.restart()
        partial.etag = _strong_etag(response)
    elif status == 206:
        _accept_partial_content(response, partial, expected_length)
    elif status == 416:
        # What we have no longer fits what the server has: start over.
        asked_from = partial.have
        partial.restart()
        raise HttpStatusError(
            f"{_redacted(response.url)}: 416 for a range from byte {asked_from}", status=416
        )
    else:
        raise HttpStatusError(
            f"{_redacted(response.url)}: HTTP {status} {response.reason_phrase}", status=status
        )
    announced = response.headers.get("Content-Length")
    if (
        announced is not None
        and announced.isdigit()
        and partial.have + int(announced) > expected_length
    ):
        total = partial.have + int(announced)
        raise DownloadTooLargeError(
            f"{_redacted(response.url)}: the server announces {total} bytes, "
            f"more than the signed {expected_length}"
        )


def _accept_partial_content(
    response: httpx.Response, partial: _Partial, expected_length: int
) -> None:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if match is None or int(match["start"]) != partial.have:
        # Not the range asked for: the bytes cannot be appended. Start over next attempt.
        partial.restart()
        raise ConnectionFailedError(
            f"{_redacted(response.url)}: 206 with Content-Range "
            f"{response.headers.get('Content-Range')!r} does not continue the download"
        )
    total = match["total"]
    if total != "*" and int(total) > expected_length:
        raise DownloadTooLargeError(
            f"{_redacted(response.url)}: the server's file has {total} bytes, "
            f"more than the signed {expected_length}"
        )


def _strong_etag(response: httpx.Response) -> str | None:
    etag: str | None = response.headers.get("ETag")
    # If-Range takes strong validators only; a weak one would make the server send 200.
    if etag is None or etag.startswith("W/"):
        return None
    return etag


def _verify_body(partial: _Partial, expected_length: int, expected_sha256: str) -> None:
    if partial.have != expected_length:
        raise LengthMismatchError(
            f"the download has {partial.have} bytes, the release signed {expected_length}"
        )
    digest = partial.digest.hexdigest()
    if digest != expected_sha256:
        raise HashMismatchError(
            f"the download hashes to {digest}, the release signed {expected_sha256}"
        )


def _publish(part: Path, destination: Path) -> None:
    with part.open("rb+") as file:
        os.fsync(file.fileno())
    os.replace(part, destination)
    fsync_dir(destination.parent)


def _redacted(url: str | httpx.URL) -> str:
    """``url`` without credentials or query: presigned URLs carry secrets in both."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid URL>"
    return str(parsed.copy_with(userinfo=b"", query=None, fragment=None))


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _disk_free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free
