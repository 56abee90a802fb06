"""At most ``limit`` requests run their handlers at once; the rest wait in the event loop.

Why: a request's database session is opened by a dependency in one thread-pool call and
used and closed by the handler in others, releasing its thread between them. When more
requests arrive than there are pooled connections (or, on SQLite, than can wait on the
one write lock), the threads fill with requests waiting for a connection while the
requests that hold connections wait for a thread: nothing moves until the pool's 30 s
timeout fails them all. Two hundred devices fetching an artifact at once did exactly
that. Waiting here, before any thread or connection is taken, cannot deadlock: the limit
is below both the pool's size and the thread pool's.

A slot is taken only around the work. This layer sits inside ``RequestLimits``
(``limits``), which has received the whole request body before it calls in, so a client
that sends its body slowly, or never, waits there and holds no slot; ``RequestLimits``
takes a slot from the same ``HandlerSlots`` for the token check it runs before it
accepts an upload. A slot is given back when the response starts: by then the handler
has run and its session (a function-scoped dependency) is closed, so a long download
does not hold one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HANDLER_CONCURRENCY", "HandlerConcurrencyLimit", "HandlerSlots"]

# Below SQLAlchemy's default pool (5 + 10 overflow) and anyio's 40 worker threads.
HANDLER_CONCURRENCY = 10


class HandlerSlots:
    """The slots every piece of request work that may take a thread or a connection
    shares; the semaphore is made in the server's event loop, on first use."""

    def __init__(self, limit: int = HANDLER_CONCURRENCY) -> None:
        self.limit = limit
        self._semaphore: asyncio.Semaphore | None = None

    async def acquire(self) -> None:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        await self._semaphore.acquire()

    def release(self) -> None:
        assert self._semaphore is not None, "release without acquire"
        self._semaphore.release()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


class HandlerConcurrencyLimit:
    def __init__(
        self, app: ASGIApp, limit: int = HANDLER_CONCURRENCY, slots: HandlerSlots | None = None
    ) -> None:
        self.app = app
        self.slots = slots if slots is not None else HandlerSlots(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slots = self.slots
        await slots.acquire()
        held = True

        async def send_releasing(message: Message) -> None:
            nonlocal held
            if held and message["type"] == "http.response.start":
                held = False
                slots.release()
            await send(message)

        try:
            await self.app(scope, receive, send_releasing)
        finally:
            if held:
                slots.release()
