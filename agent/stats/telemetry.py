"""A statistics window as the protocol reports it (``protocol.TelemetryWindow``).

Invariant: whatever a window holds, the result is within the schema: the confidence is
clipped to [0, 1] (a width-matched output that is not quite a probability), errors never
exceed requests, a zero-length window gets ``MIN_WINDOW_S`` and non-finite PSI values
are left out, as are drift counts past the schema's limits. ``output_drift_psi`` (the
worst output's PSI) is set only for a window of at least ``tensors.MIN_DRIFT_REQUESTS``
requests; ``drift_counts`` are sent for every window, for the controller to pool.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime

import protocol
from tensors import MIN_DRIFT_REQUESTS

from .recorder import WindowStats

__all__ = ["MIN_WINDOW_S", "to_telemetry_window"]

# A window closed at the instant it opened still needs a positive length on the wire.
MIN_WINDOW_S = 1e-3


def to_telemetry_window(
    stats: WindowStats,
    *,
    model: str,
    release: protocol.ReleaseRef | None,
    window_start: datetime,
    shadow: protocol.ShadowWindow | None = None,
) -> protocol.TelemetryWindow:
    """The window as the protocol reports it; ``window_start`` is its wall-clock start.

    Kept within the schema: the confidence is clipped to [0, 1] (a width-matched output
    that is not quite a probability) and a zero-length window gets ``MIN_WINDOW_S``.
    """
    latency = None
    if stats.p50_ms is not None and stats.p95_ms is not None and stats.p99_ms is not None:
        latency = protocol.LatencySummary(
            p50_ms=stats.p50_ms,
            p95_ms=stats.p95_ms,
            p99_ms=stats.p99_ms,
            bounds_ms=list(stats.latency_bounds_ms),
            counts=list(stats.latency_counts),
        )
    confidence = stats.top1_confidence_mean
    outputs = [psi for psi in stats.output_drift_psi.values() if math.isfinite(psi)]
    judged = outputs and stats.requests >= MIN_DRIFT_REQUESTS
    return protocol.TelemetryWindow(
        model=model,
        release=release,
        window_start=window_start,
        window_s=max(stats.window_s, MIN_WINDOW_S),
        requests=stats.requests,
        errors=min(stats.errors, stats.requests),
        nonfinite_outputs=stats.nonfinite_outputs,
        latency=latency,
        top1_confidence_mean=None if confidence is None else min(max(confidence, 0.0), 1.0),
        class_counts=None if stats.class_counts is None else list(stats.class_counts),
        drift_psi={name: psi for name, psi in stats.drift_psi.items() if math.isfinite(psi)},
        output_drift_psi=max(outputs) if judged else None,
        drift_counts=dict(
            itertools.islice(
                (
                    (name, list(counts))
                    for name, counts in stats.drift_counts.items()
                    if 0 < len(counts) <= protocol.MAX_DRIFT_BINS
                ),
                protocol.MAX_DRIFT_TENSORS,
            )
        ),
        labeled=stats.labeled,
        labeled_correct=min(stats.labeled_correct, stats.labeled),
        shadow=shadow,
    )
