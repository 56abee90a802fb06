"""The shadow stage of a rollout: its policy, what it measures, and its gates.

Before the canary, a rollout may run its release as a *shadow* on some devices: each
keeps serving what it serves and runs the candidate on copies of live requests
(``protocol.ShadowOrder``), reporting how the two differ (``protocol.ShadowWindow``).
No user sees an answer of the candidate. The stage is judged like a wave, by gates.

Pure: figures and thresholds in, ``GateResult``s out.

Invariants:
- every figure is pooled over the shadow devices' windows since the stage started
  (sums and histogram counts added up before a rate, mean or quantile is read);
- a ceiling gate fails when its value is strictly greater than its threshold, the
  agreement floor when strictly less; ``None`` disables a gate;
- with fewer than ``min_samples`` samples every gate is skipped, saying so: the stage
  has no evidence either way, and the canary's own gates still stand guard;
- agreement is read only for classifiers (rows both models classified); a model whose
  outputs are not class scores is judged by its output distance instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .waves import GateResult, Quota, RolloutSpecError

__all__ = ["ShadowHealth", "ShadowPolicy", "evaluate_shadow_gates"]


@dataclass(frozen=True)
class ShadowPolicy:
    """How many devices shadow the release, for how long, and what it must show."""

    devices: Quota = field(default_factory=lambda: Quota(count=1))
    duration_s: float = 600.0
    min_samples: int = 200
    max_cpu_fraction: float = 0.2
    min_agreement: float | None = 0.98
    max_latency_ratio: float | None = 1.5
    max_error_rate: float | None = 0.0
    max_nonfinite_rate: float | None = 0.0
    max_confidence_drop: float | None = 0.1
    max_distance: float | None = None

    def __post_init__(self) -> None:
        if self.devices.count == 0:
            raise RolloutSpecError("the shadow stage needs at least one device")
        if not (math.isfinite(self.duration_s) and self.duration_s >= 0):
            raise RolloutSpecError(f"shadow duration must be zero or more: {self.duration_s}")
        if self.min_samples < 0:
            raise RolloutSpecError(f"shadow min_samples must be zero or more: {self.min_samples}")
        if not 0 < self.max_cpu_fraction <= 1:
            raise RolloutSpecError(
                f"shadow max_cpu_fraction must be above 0 and at most 1: {self.max_cpu_fraction}"
            )
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise RolloutSpecError(f"min_agreement must be within [0, 1]: {self.min_agreement}")
        for name in ("max_latency_ratio", "max_error_rate", "max_nonfinite_rate"):
            value = getattr(self, name)
            if value is not None and not value >= 0:  # NaN too
                raise RolloutSpecError(f"{name} must be zero or more: {value}")
        for name in ("max_confidence_drop", "max_distance"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise RolloutSpecError(f"{name} must be zero or more: {value}")


@dataclass(frozen=True)
class ShadowHealth:
    """How the candidate compared with the serving models, pooled over the shadow devices."""

    devices: int = 0
    samples: int = 0
    skipped: int = 0
    error_rate: float | None = None
    nonfinite_rate: float | None = None
    compared_rows: int = 0
    agreement: float | None = None
    confidence_drop: float | None = None  # serving's mean top-1 confidence minus the shadow's
    mean_distance: float | None = None
    latency_ratio: float | None = None  # the shadow's median latency over the serving one's
    shadow_p50_ms: float | None = None
    serving_p50_ms: float | None = None


def evaluate_shadow_gates(health: ShadowHealth, policy: ShadowPolicy) -> tuple[GateResult, ...]:
    """Every gate of the shadow stage, in a fixed order, passed or not, with its numbers."""
    limits = {
        "shadow_agreement": policy.min_agreement,
        "shadow_latency_ratio": policy.max_latency_ratio,
        "shadow_error_rate": policy.max_error_rate,
        "shadow_nonfinite_rate": policy.max_nonfinite_rate,
        "shadow_confidence_drop": policy.max_confidence_drop,
        "shadow_distance": policy.max_distance,
    }
    if health.samples < max(policy.min_samples, 1):
        note = (
            f"skipped: {health.samples} samples from {health.devices} shadow devices, "
            f"fewer than {policy.min_samples}"
        )
        return tuple(_skipped(name, limit, note) for name, limit in limits.items())
    of = f"of {health.samples} samples from {health.devices} devices"
    agreement_note = (
        f"{health.compared_rows} rows compared, {of}"
        if health.agreement is not None
        else "skipped: no rows compared (outputs that are not class scores, or not finite)"
    )
    return (
        _floor("shadow_agreement", health.agreement, policy.min_agreement, agreement_note),
        _ceiling(
            "shadow_latency_ratio",
            health.latency_ratio,
            policy.max_latency_ratio,
            f"median {health.shadow_p50_ms} ms vs serving {health.serving_p50_ms} ms "
            "on the same requests",
        ),
        _ceiling("shadow_error_rate", health.error_rate, policy.max_error_rate, of),
        _ceiling("shadow_nonfinite_rate", health.nonfinite_rate, policy.max_nonfinite_rate, of),
        _ceiling(
            "shadow_confidence_drop",
            health.confidence_drop,
            policy.max_confidence_drop,
            f"serving minus shadow mean top-1 confidence, {of}",
        ),
        _ceiling(
            "shadow_distance",
            health.mean_distance,
            policy.max_distance,
            f"mean relative L1 distance of the outputs, {of}",
        ),
    )


def _skipped(name: str, threshold: float | None, note: str) -> GateResult:
    if threshold is None:
        return GateResult(name, None, None, True, "disabled")
    return GateResult(name, None, threshold, True, note)


def _ceiling(name: str, value: float | None, threshold: float | None, note: str) -> GateResult:
    if threshold is None:
        return GateResult(name, value, None, True, "disabled")
    if value is None:
        return GateResult(name, None, threshold, True, "skipped: not measured")
    return GateResult(name, value, threshold, value <= threshold, note)


def _floor(name: str, value: float | None, threshold: float | None, note: str) -> GateResult:
    if threshold is None:
        return GateResult(name, value, None, True, "disabled")
    if value is None:
        return GateResult(name, None, threshold, True, note)
    return GateResult(name, value, threshold, value >= threshold, note)
