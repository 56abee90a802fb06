"""The gate a variant must pass against its parent: a pure decision on an evaluation report.

A variant is rejected when its accuracy drops by more than the allowed points, when it
agrees with the reference on the top-1 class less often than required, when its largest
absolute output error exceeds an optional bound, when it produces non-finite values
where the reference is finite, or when it runs slower than its parent by more than
``max_latency_ratio`` (1.10x by default: a "smaller" model that is 4x slower on the CPU
it will run on is worse, as dynamic INT8 convolutions are with ONNX Runtime). A threshold
whose metric could not be measured (no labels, no classifier output) is skipped and said
so in the notes, never silently passed. Latency is gated only when the parent takes at
least ``MIN_GATED_LATENCY_MS`` per batch: below that the ratio measures call overhead and
scheduling noise, not the model (the digits MLP takes 0.014 ms), and a note says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .evaluate import EvaluationReport

__all__ = [
    "DEFAULT_MAX_ACCURACY_DROP_POINTS",
    "DEFAULT_MAX_LATENCY_RATIO",
    "DEFAULT_MIN_TOP1_AGREEMENT",
    "MIN_GATED_LATENCY_MS",
    "GateDecision",
    "GatePolicy",
    "judge",
]

DEFAULT_MAX_ACCURACY_DROP_POINTS = 1.0
DEFAULT_MIN_TOP1_AGREEMENT = 0.99
DEFAULT_MAX_LATENCY_RATIO = 1.10
MIN_GATED_LATENCY_MS = 1.0


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds; ``max_abs_error`` is off unless set, ``max_latency_ratio`` off if None."""

    max_accuracy_drop_points: float = DEFAULT_MAX_ACCURACY_DROP_POINTS
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT
    max_abs_error: float | None = None
    max_latency_ratio: float | None = DEFAULT_MAX_LATENCY_RATIO


@dataclass(frozen=True)
class GateDecision:
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "accepted" if self.accepted else "rejected"


def judge(report: EvaluationReport, policy: GatePolicy) -> GateDecision:
    """Accept or reject ``report`` under ``policy``, with a reason per failed threshold."""
    reasons: list[str] = []
    notes: list[str] = []
    if report.nonfinite_outputs:
        reasons.append(
            f"{report.nonfinite_outputs} output values are NaN or infinite "
            "where the reference is finite"
        )
    drop = report.accuracy_drop_points
    if drop is None:
        notes.append("accuracy not measured (no labels or no classifier output): drop not gated")
    elif drop > policy.max_accuracy_drop_points:
        reasons.append(
            f"accuracy drops {drop:.2f} points ({report.accuracy_parent:.4f} -> "
            f"{report.accuracy_candidate:.4f}), more than the allowed "
            f"{policy.max_accuracy_drop_points:g}"
        )
    agreement = report.top1_agreement
    if agreement is None:
        notes.append("no classifier output to compare top-1 classes: agreement not gated")
    elif agreement < policy.min_top1_agreement:
        reasons.append(
            f"top-1 agreement {agreement:.4f} with the {report.reference} is below "
            f"the required {policy.min_top1_agreement:g}"
        )
    if policy.max_abs_error is not None:
        error = report.max_abs_error
        if error is None:
            notes.append("no float output to measure: max abs error not gated")
        elif error > policy.max_abs_error:
            reasons.append(
                f"max abs error {error:.6g} against the {report.reference} exceeds "
                f"the allowed {policy.max_abs_error:g}"
            )
    _judge_latency(report, policy, reasons, notes)
    return GateDecision(not reasons, reasons, notes)


def _judge_latency(
    report: EvaluationReport, policy: GatePolicy, reasons: list[str], notes: list[str]
) -> None:
    limit, ratio = policy.max_latency_ratio, report.latency_ratio
    parent_ms, candidate_ms = report.latency_ms_parent, report.latency_ms_candidate
    if limit is None:
        notes.append("latency not gated (no max latency ratio)")
    elif not math.isfinite(ratio):
        notes.append("latency ratio not measured: latency not gated")
    elif parent_ms < MIN_GATED_LATENCY_MS:
        notes.append(
            f"parent takes {parent_ms:.3g} ms per batch, under {MIN_GATED_LATENCY_MS:g} ms: "
            f"latency ratio {ratio:.2f} is noise at that scale, not gated"
        )
    elif ratio > limit:
        reasons.append(
            f"{candidate_ms:.3g} ms per batch is {ratio:.2f}x the parent's {parent_ms:.3g} ms, "
            f"slower than the allowed {limit:g}x"
        )
