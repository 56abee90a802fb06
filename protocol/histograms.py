"""Latency histograms as devices send them, and the quantiles read from them.

One bucket layout for every device, so that the controller can add the counts of many
windows and devices before it reads a percentile: a group's p95 is the p95 of all its
requests, not an average of per-window p95s (which drifts with how requests spread over
windows).

Buckets: ``LATENCY_BOUNDS_MS`` are 10 per decade, 0.05 ms to 12.56 s (each 26 % above the
last); bucket ``i`` holds latencies in (bound ``i-1``, bound ``i``], and one overflow
bucket above the last bound takes the rest, so there are ``len(LATENCY_BOUNDS_MS) + 1``.

Quantiles (``histogram_quantile``): with ``n`` latencies in buckets, the rank is
``q * n``; the bucket where the cumulative count reaches the rank is interpolated
linearly between its lower and upper bound, and those bounds are first narrowed to the
smallest and largest latency observed when known (so a constant latency gives itself
back and the overflow bucket ends at the maximum). The error is at most one bucket width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["LATENCY_BOUNDS_MS", "LATENCY_BUCKETS", "histogram_quantile"]

# 0.05 ms * 10**(k/10), k = 0..54, rounded to 4 significant digits: 0.05 ms .. 12.56 s.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(
    float(f"{0.05 * 10 ** (k / 10):.4g}") for k in range(55)
)
LATENCY_BUCKETS = len(LATENCY_BOUNDS_MS) + 1


def histogram_quantile(
    counts: Sequence[int],
    q: float,
    *,
    bounds: Sequence[float] = LATENCY_BOUNDS_MS,
    min_value: float = 0.0,
    max_value: float = math.inf,
) -> float | None:
    """The ``q`` quantile of the counted values (see the module doc); None without any.

    Without ``max_value`` a quantile in the overflow bucket is its lower bound.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for index, count in enumerate(counts):
        if count and below + count >= rank:
            lower = bounds[index - 1] if index else 0.0
            upper = bounds[index] if index < len(bounds) else max_value
            lower = max(lower, min_value)
            upper = min(upper, max_value)
            if not math.isfinite(upper):
                return lower
            return lower + (upper - lower) * max(rank - below, 0.0) / count
        below += count
    return max_value if math.isfinite(max_value) else bounds[-1]  # pragma: no cover
