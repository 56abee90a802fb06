"""The gate a variant must pass against its parent: a pure decision on an evaluation report.

A variant is rejected when its accuracy drops by more than the allowed points, when it
agrees with the reference on the top-1 class less often than required, when its largest
absolute output error exceeds an optional bound, or when it produces non-finite values
where the reference is finite. A threshold whose metric could not be measured (no labels,
no classifier output) is skipped and said so in the notes, never silently passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .evaluate import EvaluationReport

__all__ = [
    "DEFAULT_MAX_ACCURACY_DROP_POINTS",
    "DEFAULT_MIN_TOP1_AGREEMENT",
    "GateDecision",
    "GatePolicy",
    "judge",
]

DEFAULT_MAX_ACCURACY_DROP_POINTS = 1.0
DEFAULT_MIN_TOP1_AGREEMENT = 0.99


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds; ``max_abs_error`` is off unless set."""

    max_accuracy_drop_points: float = DEFAULT_MAX_ACCURACY_DROP_POINTS
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT
    max_abs_error: float | None = None


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
    return GateDecision(not reasons, reasons, notes)
