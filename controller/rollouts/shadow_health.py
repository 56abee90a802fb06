"""The shadow stage's figures, pooled from the telemetry of its devices.

One query over the ``telemetry`` rows of the shadow devices whose windows carry a shadow
of the candidate's version since the stage started; every window's ``ShadowWindow`` is
added up (sums and histogram counts) before any rate, mean or quantile is read, so a
device that sampled more counts more, and no per-window figure is ever averaged.

The latency ratio compares median CPU times on the same samples: the candidate's and a
one-thread copy of the serving model's, both run in the shadow's thread (wall times would
measure how busy the device was, as the shadow runs at the lowest CPU priority).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine, select

from protocol import ShadowWindow, histogram_quantile

from ..devices.tables import telemetry_table
from ..mqtt.telemetry import IN_CHUNK, add_shadow_windows, parse_shadow, to_utc
from .core import ShadowHealth

__all__ = ["shadow_health"]

_T = telemetry_table


def shadow_health(
    engine: Engine,
    *,
    device_ids: Sequence[str],
    model: str,
    version: int,
    since: datetime,
) -> ShadowHealth:
    """How ``model`` v``version`` compared as a shadow on ``device_ids`` since ``since``."""
    total: ShadowWindow | None = None
    devices: set[str] = set()
    with engine.connect() as connection:
        for start in range(0, len(device_ids), IN_CHUNK):
            rows = connection.execute(
                select(_T.c.device_id, _T.c.shadow).where(
                    _T.c.model_name == model,
                    _T.c.shadow_version == version,
                    _T.c.window_start >= to_utc(since),
                    _T.c.device_id.in_(list(device_ids[start : start + IN_CHUNK])),
                )
            )
            for device_id, text in rows:
                window = parse_shadow(text)
                if window is None or window.release.version != version:
                    continue
                devices.add(device_id)
                total = window if total is None else add_shadow_windows(total, window)
    return _figures(total, devices=len(devices))


def _figures(total: ShadowWindow | None, *, devices: int) -> ShadowHealth:
    if total is None:
        return ShadowHealth()
    samples, rows = total.samples, total.compared_rows
    compared = samples - total.errors - total.nonfinite  # samples with finite outputs
    shadow_p50 = histogram_quantile(total.cpu_counts, 0.5)
    serving_p50 = histogram_quantile(total.serving_cpu_counts, 0.5)
    return ShadowHealth(
        devices=devices,
        samples=samples,
        skipped=total.skipped,
        error_rate=total.errors / samples if samples else None,
        nonfinite_rate=total.nonfinite / samples if samples else None,
        compared_rows=rows,
        agreement=total.agreed_rows / rows if rows else None,
        confidence_drop=(total.serving_confidence_sum - total.confidence_sum) / rows
        if rows
        else None,
        mean_distance=total.distance_sum / compared if compared > 0 else None,
        latency_ratio=shadow_p50 / serving_p50 if shadow_p50 is not None and serving_p50 else None,
        shadow_p50_ms=shadow_p50,
        serving_p50_ms=serving_p50,
    )
