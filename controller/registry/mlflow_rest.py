"""The one adapter over an MLflow tracking server's REST API, treated as untrusted.

Every answer is read with a byte limit and every request has a timeout; a file download
is also bounded by a deadline, so a server that drips bytes cannot hold a worker thread.
httpx's errors are translated here, once: a server that cannot be reached, times out,
or answers an error or something other than MLflow's JSON is an ``UpstreamError`` (a
502 to the caller); MLflow's ``RESOURCE_DOES_NOT_EXIST`` is a ``NotFoundError``; a file
over its limit is an ``UploadTooLargeError``, and leaves no partial file behind.
Redirects are not followed. Credentials in the URL are used for HTTP basic
authentication and never appear in ``display_url``, messages or logs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from ..errors import BadRequestError, NotFoundError, UploadTooLargeError, UpstreamError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DOWNLOAD_DEADLINE_S",
    "MAX_ANSWER_BYTES",
    "READ_TIMEOUT_S",
    "MlflowRest",
]

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # between two reads, not for a whole answer
DOWNLOAD_DEADLINE_S = 900.0  # a whole file, however fast its bytes come
# A run's JSON with thousands of parameters stays well under this.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
MAX_MESSAGE_CHARS = 300
CHUNK_BYTES = 1024 * 1024


class MlflowRest:
    """GETs against one MLflow server: JSON answers and file downloads, all bounded."""

    def __init__(self, base_url: str, *, transport: httpx.BaseTransport | None = None) -> None:
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadRequestError(f"mlflow_uri must be an http(s) URL, not {base_url!r}")
        auth = (
            httpx.BasicAuth(parts.username or "", parts.password or "")
            if parts.username is not None
            else None
        )
        netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        if ":" in parts.hostname:  # an IPv6 literal keeps its brackets
            netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
        self.display_url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._http = httpx.Client(
            base_url=self.display_url,
            auth=auth,
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
            follow_redirects=False,
            # Sizes are counted as received: no compression to count through.
            headers={"Accept-Encoding": "identity"},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MlflowRest:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def get_json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """The JSON object at ``path``; ``NotFoundError`` when MLflow says it does not exist."""
        try:
            with self._http.stream("GET", path, params=params) as response:
                body = self._read_bounded(response, MAX_ANSWER_BYTES, path)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        try:
            answer = json.loads(body) if body else {}
        except ValueError:
            answer = None
        error_code = answer.get("error_code") if isinstance(answer, dict) else None
        if error_code == "RESOURCE_DOES_NOT_EXIST":
            raise NotFoundError(_message(answer))
        if response.is_error or answer is None:
            raise UpstreamError(
                f"MLflow at {self.display_url} answered {path} with {response.status_code}"
                + (f" {error_code}: {_message(answer)}" if error_code else ", not MLflow's JSON")
            )
        if not isinstance(answer, dict):
            raise UpstreamError(f"MLflow at {self.display_url} answered {path} with no object")
        return answer

    def download(self, path: str, destination: Path, *, max_bytes: int, what: str) -> int:
        """Write the file at ``path`` to ``destination``; at most ``max_bytes``, or nothing.

        Returns the number of bytes written. On any error the partial file is removed.
        """
        started = time.monotonic()
        written = 0
        created = False
        try:
            with self._http.stream("GET", path) as response:
                if response.is_error:
                    raise UpstreamError(
                        f"MLflow at {self.display_url} answered {response.status_code} "
                        f"for the {what} it listed"
                    )
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise _too_large(what, int(declared), max_bytes)
                with destination.open("xb") as out:
                    created = True
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        written += len(chunk)
                        if written > max_bytes:
                            raise _too_large(what, written, max_bytes)
                        if time.monotonic() - started > DOWNLOAD_DEADLINE_S:
                            raise UpstreamError(
                                f"MLflow at {self.display_url} took over "
                                f"{DOWNLOAD_DEADLINE_S:.0f} s to send the {what}"
                            )
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
        except BaseException as exc:
            if created:
                destination.unlink(missing_ok=True)
            if isinstance(exc, httpx.HTTPError):
                raise self._unreachable(exc) from exc
            raise
        return written

    def _read_bounded(self, response: httpx.Response, max_bytes: int, path: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise UpstreamError(
                    f"MLflow at {self.display_url} answered {path} with over {max_bytes} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _unreachable(self, exc: httpx.HTTPError) -> UpstreamError:
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "is unreachable"
        logger.warning("MLflow at %s %s: %s", self.display_url, kind, type(exc).__name__)
        detail = str(exc)[:MAX_MESSAGE_CHARS] or type(exc).__name__
        return UpstreamError(f"MLflow at {self.display_url} {kind}: {detail}")


def _message(answer: object) -> str:
    if isinstance(answer, dict):
        text = str(answer.get("message") or answer.get("error_code") or "")
        return text[:MAX_MESSAGE_CHARS]
    return ""


def _too_large(what: str, size: int, limit: int) -> UploadTooLargeError:
    return UploadTooLargeError(f"the {what} is over its limit of {limit} bytes ({size} or more)")
