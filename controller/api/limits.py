"""HTTP request limits, applied before anything else sees a request.

``RequestLimits`` is the outermost ASGI layer (pure ASGI: it never wraps a response).
Invariants it keeps:

- **No body over its route's limit is read.** A ``Content-Length`` over the limit gets
  413 at once, before a byte of the body is read; a chunked body, or one longer than it
  said, is counted as it arrives and gets 413 the moment it passes the limit. JSON and
  form routes share ``max_request_bytes`` (1 MiB); the model upload gets the model and
  validation-set limits together (the multipart receiver checks each part again).
- **A body arrives in bounded time.** It must be complete within ``body_timeout_s`` plus
  one second per ``min_body_bytes_per_s`` received; otherwise 408. Refusals close the
  connection, so the rest of a refused body is never read.
- **The whole body is received before the app runs.** Small bodies are held in memory,
  upload bodies in a nameless temp file under ``spool_dir``; only then is the inner app,
  and with it ``HandlerConcurrencyLimit``, called with a ``receive`` that replays the
  body. A client that sends slowly or never holds a socket
  and at most its limit in memory or on disk, never a handler slot, a worker thread or a
  database connection.
- **Every refusal is reported.** ``on_refusal`` is called with each one before it is
  sent (the app's metrics count them: a refused request never reaches the app's
  middleware, so nothing else would).
- **Uploads are admitted before they are spooled.** A rule may carry an admission check
  (for uploads: a bearer token with the operator role, checked under a handler slot), so
  a client without a token cannot make the controller write its body to disk; a small
  body is at most 1 MiB of memory until the route checks the token.

Why spool uploads rather than give the slot back while the handler streams the body:
the upload handler's token check opens its database session, and that session holds a
pool connection (on SQLite, the write lock: transactions begin IMMEDIATE) until the
handler returns. Giving the slot back while a slow client sends its model would leave
connections, and the write lock, to the client's pace, and taking the slot again once
the body is in could wait on slot holders that wait for that connection. Receiving the
body first costs one more write of it to disk, and no slot is held by the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..tokens import Role, authenticate
from .concurrency import HandlerSlots

__all__ = [
    "REFUSAL_REASONS",
    "Admission",
    "BodyRule",
    "Refusal",
    "RequestLimits",
    "token_admission",
]

logger = logging.getLogger(__name__)

REPLAY_CHUNK_BYTES = 256 * 1024
# Every ``Refusal.reason`` this module gives, so that a counter can start each at zero.
REFUSAL_REASONS = ("too_large", "too_slow", "bad_content_length", "unauthorized", "forbidden")


@dataclass(frozen=True)
class Refusal:
    """An answer given instead of calling the app; the connection is closed after it."""

    status: int
    detail: str
    kind: str
    reason: str  # a metrics label, one of REFUSAL_REASONS
    headers: tuple[tuple[bytes, bytes], ...] = ()


# Decides, before any of the body is read, whether a request may send it.
Admission = Callable[[Scope], Awaitable[Refusal | None]]


@dataclass(frozen=True)
class BodyRule:
    """The body limit of the routes whose method is ``method`` and path matches ``path``."""

    method: str
    path: re.Pattern[str]
    max_bytes: int
    spool: bool = False  # to a temp file rather than memory
    admission: Admission | None = None

    def matches(self, scope: Scope) -> bool:
        return scope["method"] == self.method and self.path.fullmatch(scope["path"]) is not None


class _BodyRefusedError(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


class _DisconnectedError(Exception):
    pass


class RequestLimits:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_request_bytes: int,
        body_timeout_s: float,
        min_body_bytes_per_s: float,
        spool_dir: Path,
        rules: Sequence[BodyRule] = (),
        clock: Callable[[], float] = time.monotonic,
        on_refusal: Callable[[Refusal], None] = lambda _refusal: None,
    ) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.body_timeout_s = body_timeout_s
        self.min_body_bytes_per_s = min_body_bytes_per_s
        self.spool_dir = spool_dir
        self.rules = tuple(rules)
        self.clock = clock
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = next((r for r in self.rules if r.matches(scope)), None)
        max_bytes = rule.max_bytes if rule is not None else self.max_request_bytes
        headers = Headers(scope=scope)
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            await self._refuse(
                scope,
                send,
                Refusal(
                    400, "Content-Length is not a number", "BadRequestError", "bad_content_length"
                ),
            )
            return
        if declared is not None and int(declared) > max_bytes:
            await self._refuse(scope, send, _too_large(max_bytes))
            return
        if not chunked and not int(declared or 0):
            await self.app(scope, receive, send)  # no body to wait for
            return
        if rule is not None and rule.admission is not None:
            refusal = await rule.admission(scope)
            if refusal is not None:
                await self._refuse(scope, send, refusal)
                return
        spool: _Sink = _Spool(self.spool_dir) if rule is not None and rule.spool else _Memory()
        try:
            try:
                await self._receive_body(receive, spool, max_bytes)
            except _BodyRefusedError as refused:
                await self._refuse(scope, send, refused.refusal)
                return
            except _DisconnectedError:
                return
            await self.app(scope, spool.replay(receive), send)
        finally:
            spool.discard()

    async def _receive_body(self, receive: Receive, sink: _Sink, max_bytes: int) -> None:
        started = self.clock()
        received = 0
        while True:
            deadline = started + self.body_timeout_s + received / self.min_body_bytes_per_s
            try:
                async with asyncio.timeout(max(deadline - self.clock(), 0.0)):
                    message = await receive()
            except TimeoutError:
                raise _BodyRefusedError(
                    Refusal(
                        408,
                        f"the request body did not arrive in time ({received} bytes received)",
                        "RequestTimeoutError",
                        "too_slow",
                    )
                ) from None
            if message["type"] == "http.disconnect":
                raise _DisconnectedError
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if received > max_bytes:
                raise _BodyRefusedError(_too_large(max_bytes))
            sink.write(chunk)
            if not message.get("more_body", False):
                return

    async def _refuse(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        self.on_refusal(refusal)
        await _refuse(scope, send, refusal)


def _too_large(max_bytes: int) -> Refusal:
    return Refusal(
        413, f"the request body exceeds {max_bytes} bytes", "UploadTooLargeError", "too_large"
    )


async def _refuse(scope: Scope, send: Send, refusal: Refusal) -> None:
    client = scope.get("client") or ("?", 0)
    logger.info(
        "refused %s %s from %s: %d %s",
        scope["method"],
        scope["path"],
        client[0],
        refusal.status,
        refusal.detail,
    )
    body = json.dumps({"detail": refusal.detail, "kind": refusal.kind}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is never read: the connection cannot be reused.
                (b"connection", b"close"),
                *refusal.headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Sink(Protocol):
    """Where a body waits until the app runs."""

    def write(self, chunk: bytes) -> None: ...

    def replay(self, receive: Receive) -> Receive: ...

    def discard(self) -> None: ...


class _Memory:
    def __init__(self) -> None:
        self.body = bytearray()

    def write(self, chunk: bytes) -> None:
        self.body += chunk

    def replay(self, receive: Receive) -> Receive:
        pending: list[Message] = [
            {"type": "http.request", "body": bytes(self.body), "more_body": False}
        ]

        async def replayed() -> Message:
            # After the body, the server's receive: it reports the client's disconnect.
            return pending.pop() if pending else await receive()

        return replayed

    def discard(self) -> None:
        self.body = bytearray()


class _Spool:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        # Nameless (unlinked at once): nothing is left on disk when the request ends, even
        # when the process is killed.
        self.handle: IO[bytes] = tempfile.TemporaryFile(  # noqa: SIM115 - closed in discard
            dir=directory, prefix="request-body-"
        )
        self.size_bytes = 0

    def write(self, chunk: bytes) -> None:
        self.handle.write(chunk)
        self.size_bytes += len(chunk)

    def replay(self, receive: Receive) -> Receive:
        self.handle.flush()
        self.handle.seek(0)
        remaining = self.size_bytes
        done = False

        async def replayed() -> Message:
            nonlocal remaining, done
            if done:
                return await receive()
            chunk = self.handle.read(min(REPLAY_CHUNK_BYTES, remaining))
            remaining -= len(chunk)
            done = remaining <= 0 or not chunk
            return {"type": "http.request", "body": chunk, "more_body": not done}

        return replayed

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()


def token_admission(engine: Engine, role: Role, slots: HandlerSlots) -> Admission:
    """Admit a request only with a bearer token of at least ``role``.

    The route checks the token again; this check only decides whether the body is worth
    receiving. It runs under a handler slot, as any work that takes a thread and a
    connection does, and reads on ``engine`` (a reader: it never waits for SQLite's lock).
    """

    def check(token: str) -> Refusal | None:
        with Session(engine) as session:
            principal = authenticate(session, token)
        if principal is None:
            return _UNAUTHORIZED
        if not principal.role.may(role):
            return Refusal(
                403,
                f"this needs the {role.value} role; the token has {principal.role.value}",
                "ForbiddenError",
                "forbidden",
            )
        return None

    async def admit(scope: Scope) -> Refusal | None:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _UNAUTHORIZED
        async with slots.held():
            return await run_in_threadpool(check, token.strip())

    return admit


_UNAUTHORIZED = Refusal(
    401,
    "a valid bearer token is required",
    "UnauthorizedError",
    "unauthorized",
    headers=((b"www-authenticate", b"Bearer"),),
)
