"""What an alert rule measures and when it says "degraded". Pure: no I/O, no clock.

Every metric is "higher is worse" and compared with the rule's threshold:

- ``error_rate``, ``nonfinite_rate``: shares of requests;
- ``p95_latency_ms``: from the pooled latency histograms;
- ``confidence_drop``: the release's reference confidence (its validation data) minus
  the fleet's mean top-1 confidence;
- ``output_drift_psi``: the worst output's PSI, pooled, against the release's reference;
- ``input_drift_psi``: the worst input's PSI, pooled: the data moved away from what the
  model was validated on, the usual reason to retrain;
- ``label_error_rate``: the share of labeled requests the model got wrong, from the true
  classes applications sent back (the agent's ``/v2/models/{name}/feedback``).

A judgement is ``None`` (no change to the alert) when the window holds fewer than the
rule's devices or requests, or the metric was not measured: silence is not recovery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from ..rollouts.core import FleetHealth
from .schemas import Metric

__all__ = ["METRICS", "Judgement", "judge", "measure"]

METRICS: tuple[str, ...] = get_args(Metric)


@dataclass(frozen=True)
class Judgement:
    value: float | None
    degraded: bool | None  # None: not enough data to say either way
    note: str


def measure(metric: str, health: FleetHealth, reference_confidence: float | None) -> float | None:
    """The rule's metric from the pooled health; None when not measured."""
    if metric == "error_rate":
        return health.error_rate
    if metric == "nonfinite_rate":
        return health.nonfinite_rate
    if metric == "p95_latency_ms":
        return health.p95_ms
    if metric == "confidence_drop":
        if reference_confidence is None or health.confidence_mean is None:
            return None
        return reference_confidence - health.confidence_mean
    if metric == "output_drift_psi":
        return health.max_drift_psi
    if metric == "input_drift_psi":
        return health.max_input_drift_psi
    if metric == "label_error_rate":
        return None if health.label_accuracy is None else 1.0 - health.label_accuracy
    raise ValueError(f"unknown metric {metric!r}")


def judge(
    *,
    metric: str,
    threshold: float,
    min_devices: int,
    min_requests: int,
    health: FleetHealth,
    reference_confidence: float | None,
) -> Judgement:
    if health.devices < min_devices or health.requests < min_requests:
        return Judgement(
            None,
            None,
            f"not judged: {health.devices} devices and {health.requests} requests, "
            f"under {min_devices} and {min_requests}",
        )
    value = measure(metric, health, reference_confidence)
    if value is None:
        return Judgement(None, None, f"not judged: {metric} was not measured")
    degraded = value > threshold
    relation = "above" if degraded else "within"
    return Judgement(value, degraded, f"{metric} {value:.4g} {relation} {threshold:.4g}")
