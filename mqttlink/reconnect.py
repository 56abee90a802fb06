"""Staying connected: how long to wait after a failure, and the loop that waits.

Invariants:
- after the n-th failure in a row (from 0) the wait is ``protocol.backoff_delay_s(n)``:
  exponential with full jitter, capped at ``max_s``;
- only a connection that held for ``max_s`` resets the count: a broker that accepts and
  drops at once (another client with our id, say) must not become a tight loop;
- ``keep_connected`` retries only what ``retry`` accepts (by default mqttlink's
  ``TransportError``: no connection, a lost one, a timeout); anything else, refused
  credentials first, leaves it at once;
- a stop ends the wait at once: the ``stop`` event, or a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable

from protocol import backoff_delay_s

from .errors import MqttLinkError

__all__ = ["Backoff", "is_retryable", "keep_connected"]


class Backoff:
    """Counts failures in a row; ``connected()`` marks a connection that may hold."""

    def __init__(
        self,
        *,
        initial_s: float,
        max_s: float,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._initial_s = initial_s
        self._max_s = max_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._clock = clock
        self._failures = 0
        self._connected_at: float | None = None

    def connected(self) -> None:
        """Call once the broker has accepted a connection."""
        self._connected_at = self._clock()

    def next_delay_s(self) -> float:
        """The wait after the failure that just happened (a connect, or a connection)."""
        connected_at, self._connected_at = self._connected_at, None
        if connected_at is not None and self._clock() - connected_at >= self._max_s:
            self._failures = 0
        delay_s = backoff_delay_s(
            self._failures, initial_s=self._initial_s, max_s=self._max_s, rng=self._rng
        )
        self._failures += 1
        return delay_s


def is_retryable(exc: Exception) -> bool:
    """mqttlink's transport errors: the same session may work on a later connection."""
    return isinstance(exc, MqttLinkError) and exc.retryable


async def keep_connected(
    session: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff,
    stop: asyncio.Event | None = None,
    retry: Callable[[Exception], bool] = is_retryable,
    on_retry: Callable[[Exception, float], None] | None = None,
) -> None:
    """Run ``session`` (one connection, start to end) again and again.

    Returns when ``session`` returns or ``stop`` is set; raises what ``retry`` refuses.
    ``on_retry(error, delay_s)`` is called before each wait, to log it.
    """
    while stop is None or not stop.is_set():
        try:
            await session()
        except Exception as exc:
            if not retry(exc):
                raise
            delay_s = backoff.next_delay_s()
            if on_retry is not None:
                on_retry(exc, delay_s)
            if stop is None:
                await asyncio.sleep(delay_s)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await stop.wait()
        else:
            return
