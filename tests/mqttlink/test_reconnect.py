"""The backoff resets only after a connection that held; the loop retries transport
errors, never refused credentials, and a stop ends its wait. No broker, no sleeping on
real delays."""

from __future__ import annotations

import asyncio
import random

import pytest

from mqttlink import (
    Backoff,
    ConnectionFailedError,
    CredentialsRefusedError,
    LinkTimeoutError,
    keep_connected,
)

WAIT_S = 30.0


class HighestDraw(random.Random):
    """Always draws the top of the range: shows the ceiling the jitter draws under."""

    def uniform(self, a: float, b: float) -> float:
        return b


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def backoff(clock: FakeClock) -> Backoff:
    return Backoff(initial_s=0.5, max_s=30.0, rng=HighestDraw(), clock=clock)


def test_delays_double_after_each_failure_in_a_row() -> None:
    delays = backoff(FakeClock())

    assert [delays.next_delay_s() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_a_connection_that_held_resets_the_delay() -> None:
    clock = FakeClock()
    delays = backoff(clock)
    for _ in range(5):
        delays.next_delay_s()
    delays.connected()
    clock.now_s += 30.0

    assert delays.next_delay_s() == 0.5


def test_a_connection_dropped_at_once_does_not_reset_the_delay() -> None:
    clock = FakeClock()
    delays = backoff(clock)
    for _ in range(5):
        delays.next_delay_s()
    delays.connected()
    clock.now_s += 29.9

    assert delays.next_delay_s() == 16


def fast_backoff() -> Backoff:
    return Backoff(initial_s=0.001, max_s=0.002)


def test_transport_errors_are_retried_until_the_session_returns() -> None:
    failures = [ConnectionFailedError("reset"), LinkTimeoutError("no PUBACK")]
    retried: list[str] = []

    async def session() -> None:
        if failures:
            raise failures.pop(0)

    async def scenario() -> None:
        async with asyncio.timeout(WAIT_S):
            await keep_connected(
                session,
                backoff=fast_backoff(),
                on_retry=lambda exc, _delay_s: retried.append(str(exc)),
            )

    asyncio.run(scenario())

    assert retried == ["reset", "no PUBACK"]


def test_refused_credentials_leave_the_loop_after_one_attempt() -> None:
    attempts: list[int] = []

    async def session() -> None:
        attempts.append(1)
        raise CredentialsRefusedError("bad password", code=5)

    async def scenario() -> None:
        async with asyncio.timeout(WAIT_S):
            await keep_connected(session, backoff=fast_backoff())

    with pytest.raises(CredentialsRefusedError):
        asyncio.run(scenario())
    assert attempts == [1]


def test_an_error_the_caller_does_not_retry_leaves_the_loop() -> None:
    async def session() -> None:
        raise ConnectionFailedError("reset")

    async def scenario() -> None:
        async with asyncio.timeout(WAIT_S):
            await keep_connected(session, backoff=fast_backoff(), retry=lambda _exc: False)

    with pytest.raises(ConnectionFailedError):
        asyncio.run(scenario())


def test_a_stop_ends_the_wait_between_attempts() -> None:
    async def scenario() -> None:
        stop = asyncio.Event()

        async def session() -> None:
            raise ConnectionFailedError("reset")

        async with asyncio.timeout(WAIT_S):
            await keep_connected(
                session,
                backoff=Backoff(initial_s=3600.0, max_s=3600.0, rng=HighestDraw()),
                stop=stop,
                on_retry=lambda _exc, _delay_s: stop.set(),
            )

    asyncio.run(scenario())
