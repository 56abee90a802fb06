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

SLOW_CNN = {"latency_ms_parent": 6.77, "latency_ms_candidate": 27.7, "latency_ratio": 4.09}


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
        # A "smaller" CNN 4x slower than its parent (dynamic INT8 convolutions) is worse.
        (SLOW_CNN, GatePolicy(), "27.7 ms per batch is 4.09x the parent's 6.77 ms"),
        ({"latency_ms_candidate": 1.1, "latency_ratio": 1.1}, GatePolicy(), None),
        ({"latency_ms_candidate": 1.11, "latency_ratio": 1.11}, GatePolicy(), "1.11x"),
        (SLOW_CNN, GatePolicy(max_latency_ratio=5.0), None),
        (SLOW_CNN, GatePolicy(max_latency_ratio=None), None),
        # The digits MLP: 0.014 ms per batch, where a ratio is noise, not the model.
        ({"latency_ms_parent": 0.014, "latency_ratio": 1.4}, GatePolicy(), None),
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
        "four-times-slower",
        "latency-at-the-limit",
        "latency-over-the-limit",
        "model-allows-slower",
        "latency-not-gated",
        "too-fast-to-measure",
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


def test_latency_too_small_to_measure_is_noted_not_passed_silently() -> None:
    report = dataclasses.replace(BASE, latency_ms_parent=0.014, latency_ratio=1.4)
    decision = judge(report, GatePolicy())
    assert any("0.014 ms per batch, under 1 ms" in note for note in decision.notes)
