"""One HTTP request to the controller whose answer is read up to a cap.

The agent's small calls to the controller (enrollment, the CA certificate, certificate
renewal) read whole answers into memory: a server, or whoever answers in its place, must
not be able to make that unbounded. Transport failures become the agent's
``TransportError``s; an answer over the cap raises the caller's ``too_large`` error.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from ..errors import AgentError, ConnectionFailedError, TransportTimeoutError

__all__ = ["capped_request"]


def capped_request(
    method: str,
    url: str,
    *,
    verify: ssl.SSLContext | bool,
    max_bytes: int,
    timeout_s: float,
    too_large: type[AgentError],
    **kwargs: Any,
) -> tuple[int, bytes]:
    """(status, body) of ``method url``; the body is refused past ``max_bytes``."""
    try:
        with (
            httpx.Client(timeout=timeout_s, verify=verify) as client,
            client.stream(method, url, **kwargs) as response,
        ):
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(f"{url} answered over {max_bytes} bytes")
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)
    except httpx.TimeoutException as exc:
        raise TransportTimeoutError(f"no answer from {url}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise ConnectionFailedError(f"cannot reach the controller at {url}: {exc}") from exc
