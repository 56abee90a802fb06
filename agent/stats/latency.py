"""The latency histogram of a window (``protocol.histograms`` defines its buckets) and the
percentiles read from it.

Percentiles (``percentile_ms``) are ``protocol.histogram_quantile`` with the bounds
narrowed to the smallest and largest latency the window observed, so a constant latency
gives itself back and the overflow bucket ends at the maximum.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from protocol.histograms import LATENCY_BOUNDS_MS, histogram_quantile

__all__ = ["LATENCY_BOUNDS_MS", "latency_bucket_counts", "percentile_ms"]

_BOUNDS_MS = np.asarray(LATENCY_BOUNDS_MS, dtype=np.float64)


def latency_bucket_counts(latencies_ms: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """How many of ``latencies_ms`` fall in each bucket, the overflow bucket last."""
    buckets = _BOUNDS_MS.searchsorted(latencies_ms, side="left")
    return np.bincount(buckets, minlength=len(LATENCY_BOUNDS_MS) + 1)


def percentile_ms(
    latency_counts: list[int], q: float, *, min_ms: float, max_ms: float
) -> float | None:
    """The ``q`` quantile of the counted latencies; None without any."""
    return histogram_quantile(latency_counts, q, min_value=min_ms, max_value=max_ms)
