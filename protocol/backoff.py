"""How every client of the fleet waits before it tries again.

Exponential backoff with full jitter: after the ``attempt``-th failure in a row
(counting from 0) a client waits a time drawn uniformly from
``[0, min(max_s, initial_s * 2**attempt)]``. A thousand devices that lost their broker
at the same instant then come back spread over the whole window rather than at once
(the "full jitter" of AWS's architecture blog, which spreads load best of the variants).

Pure: the caller passes its random source and does the waiting itself.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["RandomSource", "backoff_delay_s"]


class RandomSource(Protocol):
    """Where the jitter comes from: ``random.Random`` (or ``SystemRandom``) will do."""

    def uniform(self, a: float, b: float) -> float: ...


# 2**32 times any initial delay is past every sensible maximum; no larger float is needed.
_MAX_DOUBLINGS = 32


def backoff_delay_s(attempt: int, *, initial_s: float, max_s: float, rng: RandomSource) -> float:
    """Seconds to wait after failure number ``attempt`` (0 for the first)."""
    ceiling_s = min(max_s, initial_s * 2 ** min(max(attempt, 0), _MAX_DOUBLINGS))
    return rng.uniform(0.0, ceiling_s)
