"""The gate's decisions as a table: report metrics in, status and reasons out."""

from __future__ import annotations

import dataclasses

import pytest

from converters import EvaluationReport, GatePolicy, judge

BASE = EvaluationReport(
    samples=100,
    size_bytes_parent=1000,
    size_bytes_candidate=400,
    size_ratio=0.4,
    latency_ms_parent=1.0,
    latency_ms_candidate=0.8,
    latency_ratio=0.8,
    latency_batch_size=32,
    accuracy_parent=0.95,
    accuracy_candidate=0.945,
    accuracy_drop_points=0.5,
    top1_agreement=0.995,
    max_abs_error=0.01,
    nonfinite_outputs=0,
    reference="labels",
)


@pytest.mark.parametrize(
    ("changes", "policy", "reason"),
    [
        ({}, GatePolicy(), None),
        ({"accuracy_candidate": 0.93, "accuracy_drop_points": 2.0}, GatePolicy(), "drops 2.00"),
        ({}, GatePolicy(max_accuracy_drop_points=0.25), "more than the allowed 0.25"),
        ({"top1_agreement": 0.98}, GatePolicy(), "agreement 0.9800"),
        ({}, GatePolicy(min_top1_agreement=1.01), "below the required 1.01"),
        ({}, GatePolicy(max_abs_error=0.001), "max abs error 0.01"),
        ({}, GatePolicy(max_abs_error=0.1), None),
        ({"nonfinite_outputs": 3}, GatePolicy(), "3 output values are NaN"),
    ],
    ids=[
        "within",
        "accuracy",
        "strict-accuracy",
        "agreement",
        "impossible-agreement",
        "abs-error",
        "loose-abs-error",
        "nonfinite",
    ],
)
def test_gate_decision(changes: dict[str, object], policy: GatePolicy, reason: str | None) -> None:
    decision = judge(dataclasses.replace(BASE, **changes), policy)  # type: ignore[arg-type]
    if reason is None:
        assert decision.status == "accepted"
        assert decision.reasons == []
    else:
        assert decision.status == "rejected"
        assert len(decision.reasons) == 1
        assert reason in decision.reasons[0]


def test_every_failed_threshold_has_its_own_reason() -> None:
    report = dataclasses.replace(BASE, top1_agreement=0.5, accuracy_drop_points=5.0)
    assert len(judge(report, GatePolicy(max_abs_error=0.0)).reasons) == 3


def test_unmeasured_metrics_are_noted_not_passed_silently() -> None:
    report = dataclasses.replace(
        BASE, accuracy_parent=None, accuracy_candidate=None, accuracy_drop_points=None,
        top1_agreement=None, max_abs_error=None,
    )  # fmt: skip
    decision = judge(report, GatePolicy(max_abs_error=0.1))
    assert decision.status == "accepted"
    assert len(decision.notes) == 3
