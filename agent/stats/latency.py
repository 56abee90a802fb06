"""The latency histogram of a window and the percentiles read from it.

Buckets: ``LATENCY_BOUNDS_MS`` are 10 per decade, 0.05 ms to 12.56 s (each 26 % above the
last); bucket ``i`` holds latencies in (bound ``i-1``, bound ``i``], and one overflow
bucket above the last bound takes the rest, so there are ``len(LATENCY_BOUNDS_MS) + 1``.

Percentiles (``percentile_ms``): with ``n`` latencies in buckets, the rank is ``q * n``;
the bucket where the cumulative count reaches the rank is interpolated linearly between
its lower and upper bound, and those bounds are first narrowed to the smallest and
largest latency observed (so a constant latency gives itself back and the overflow
bucket ends at the maximum). The error is at most one bucket width.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["LATENCY_BOUNDS_MS", "latency_bucket_counts", "percentile_ms"]

# 0.05 ms * 10**(k/10), k = 0..54, rounded to 4 significant digits: 0.05 ms .. 12.56 s.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(
    float(f"{0.05 * 10 ** (k / 10):.4g}") for k in range(55)
)

_BOUNDS_MS = np.asarray(LATENCY_BOUNDS_MS, dtype=np.float64)


def latency_bucket_counts(latencies_ms: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """How many of ``latencies_ms`` fall in each bucket, the overflow bucket last."""
    buckets = _BOUNDS_MS.searchsorted(latencies_ms, side="left")
    return np.bincount(buckets, minlength=len(LATENCY_BOUNDS_MS) + 1)


def percentile_ms(
    latency_counts: list[int], q: float, *, min_ms: float, max_ms: float
) -> float | None:
    """The ``q`` quantile of the counted latencies (see the module doc); None without any."""
    total = sum(latency_counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for index, count in enumerate(latency_counts):
        if count and below + count >= rank:
            lower = LATENCY_BOUNDS_MS[index - 1] if index else 0.0
            upper = LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else math.inf
            lower = max(lower, min_ms)
            upper = min(upper, max_ms)
            return lower + (upper - lower) * max(rank - below, 0.0) / count
        below += count
    return max_ms  # pragma: no cover - the loop always reaches the rank
