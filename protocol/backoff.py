"""How every client of the fleet waits before it tries again.

Exponential backoff with full jitter: after the ``attempt``-th failure in a row
(counting from 0) a client waits a time drawn uniformly from
``[0, min(max_s, initial_s * 2**attempt)]``. A thousand devices that lost their broker
at the same instant then come back spread over the whole window rather than at once
(the "full jitter" of AWS's architecture blog, which spreads load best of the variants).

Pure: the caller passes its random source (a ``random.Random``, or anything with its
``uniform``) and does the waiting itself; this module imports no ``random``, so the pure
cores that import ``protocol`` stay free of randomness (an import-linter contract).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["UniformSource", "backoff_delay_s"]


class UniformSource(Protocol):
    """What the backoff needs of a random source: ``random.Random.uniform``."""

    def uniform(self, a: float, b: float, /) -> float: ...


# 2**32 times any initial delay is past every sensible maximum; no larger float is needed.
_MAX_DOUBLINGS = 32


def backoff_delay_s(attempt: int, *, initial_s: float, max_s: float, rng: UniformSource) -> float:
    """Seconds to wait after failure number ``attempt`` (0 for the first)."""
    ceiling_s = min(max_s, initial_s * 2 ** min(max(attempt, 0), _MAX_DOUBLINGS))
    return rng.uniform(0.0, ceiling_s)
