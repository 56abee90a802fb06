"""The probation judge as tables: statistics and elapsed time in, verdicts out.

Policy: the protocol defaults (300 s window, 100 requests, 900 s extension, p95 ratio 1.5,
error rate 0.01, non-finite rate 0, confidence drop 0.1, PSI 0.25). A healthy candidate
and baseline are built by ``stats``; each row changes only what it is about.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agent.stats.latency import LATENCY_BOUNDS_MS
from agent.stats.probation import (
    ProbationJudge,
    ProbationOutcome,
    ProbationReason,
    ProbationVerdict,
)
from agent.stats.recorder import StatsRecorder, WindowStats
from protocol import ProbationPolicy, ReferenceProfile
from tensors import MIN_DRIFT_REQUESTS
from tests.agent.stats.profiles import record_all, softmax

POLICY_WINDOW_S = 300.0
DEADLINE_S = 1200.0
END = POLICY_WINDOW_S
EARLY = 30.0

CONTINUE = ProbationOutcome.CONTINUE
COMMIT = ProbationOutcome.COMMIT
UNOBSERVED = ProbationOutcome.COMMIT_UNOBSERVED
ROLLBACK = ProbationOutcome.ROLLBACK


def stats(
    *,
    requests: int = 200,
    errors: int = 0,
    nonfinite: int = 0,
    p95_ms: float | None = 2.0,
    confidence: float | None = 0.9,
    drift: dict[str, float] | None = None,
    input_drift: dict[str, float] | None = None,
) -> WindowStats:
    """``drift`` is output drift by output name; ``input_drift`` by input name."""
    outputs = {"x": 0.05} if drift is None else drift
    return WindowStats(
        window_start_s=0.0,
        window_s=POLICY_WINDOW_S,
        requests=requests,
        errors=errors,
        nonfinite_outputs=nonfinite,
        latency_bounds_ms=LATENCY_BOUNDS_MS,
        latency_counts=(requests,) + (0,) * len(LATENCY_BOUNDS_MS),
        p50_ms=None if p95_ms is None else p95_ms / 2,
        p95_ms=p95_ms,
        p99_ms=p95_ms,
        classified_rows=requests if confidence is not None else 0,
        top1_confidence_mean=confidence,
        class_counts=(requests,) if confidence is not None else None,
        drift_psi={**(input_drift or {}), **outputs},
        output_drift_psi=outputs,
    )


BASELINE = stats(requests=1000)
DEFAULTS = ProbationPolicy()


def judge(
    candidate: WindowStats,
    *,
    elapsed_s: float,
    baseline: WindowStats | None = BASELINE,
    policy: ProbationPolicy = DEFAULTS,
) -> ProbationVerdict:
    return ProbationJudge(policy, baseline).judge(candidate, elapsed_s=elapsed_s)


@pytest.mark.parametrize(
    ("candidate", "reason", "measured", "threshold"),
    [
        (stats(nonfinite=1), ProbationReason.NONFINITE_RATE, ("nonfinite_rate", 0.005), 0.0),
        (stats(errors=3), ProbationReason.ERROR_RATE, ("error_rate", 0.015), 0.01),
        (stats(p95_ms=3.2), ProbationReason.P95_LATENCY_RATIO, ("p95_latency_ratio", 1.6), 1.5),
        (stats(confidence=0.75), ProbationReason.CONFIDENCE_DROP, ("confidence_drop", 0.15), 0.1),
        (stats(drift={"x": 0.05, "y": 0.4}), ProbationReason.DRIFT, ("drift_psi", 0.4), 0.25),
    ],
    ids=["nonfinite_rate", "error_rate", "p95_latency_ratio", "confidence_drop", "drift"],
)
@pytest.mark.parametrize("elapsed_s", [EARLY, END, DEADLINE_S], ids=["early", "end", "deadline"])
def test_each_threshold_trips_alone(
    candidate: WindowStats,
    reason: ProbationReason,
    measured: tuple[str, float],
    threshold: float,
    elapsed_s: float,
) -> None:
    verdict = judge(candidate, elapsed_s=elapsed_s)

    key, value = measured
    assert (verdict.outcome, verdict.reason) == (ROLLBACK, reason)
    assert verdict.numbers[key] == pytest.approx(value)
    assert verdict.numbers[f"max_{key}"] == threshold
    assert verdict.final
    assert verdict.message.startswith("rollback: ")


@pytest.mark.parametrize(
    ("elapsed_s", "outcome"),
    [(0.0, CONTINUE), (EARLY, CONTINUE), (299.9, CONTINUE), (END, COMMIT), (5000.0, COMMIT)],
    ids=["activation", "early", "just_before_end", "window_end", "long_after"],
)
def test_healthy_model_commits_at_window_end_and_not_before(
    elapsed_s: float, outcome: ProbationOutcome
) -> None:
    verdict = judge(stats(), elapsed_s=elapsed_s)

    assert (verdict.outcome, verdict.reason) == (outcome, None)
    assert verdict.final == (outcome is not CONTINUE)


@pytest.mark.parametrize(
    "baseline",
    [None, stats(requests=0, p95_ms=None, confidence=None), stats(requests=99)],
    ids=["missing", "zero_traffic", "too_few_requests"],
)
@pytest.mark.parametrize(
    ("candidate", "outcome", "reason"),
    [
        (stats(p95_ms=50.0, confidence=0.1), COMMIT, None),
        (stats(p95_ms=50.0, confidence=0.1, errors=5), ROLLBACK, ProbationReason.ERROR_RATE),
        (stats(nonfinite=1), ROLLBACK, ProbationReason.NONFINITE_RATE),
        # No baseline's outputs on the same traffic: the data's drift and the model's are
        # indistinguishable, so output drift is not judged (and said so).
        (stats(drift={"x": 1.0}), COMMIT, None),
    ],
    ids=[
        "slow_unsure_commits",
        "errors_still_judged",
        "nonfinite_still_judged",
        "drift_not_judged",
    ],
)
def test_without_a_usable_baseline_only_absolute_thresholds_are_judged(
    baseline: WindowStats | None,
    candidate: WindowStats,
    outcome: ProbationOutcome,
    reason: ProbationReason | None,
) -> None:
    verdict = judge(candidate, elapsed_s=END, baseline=baseline)

    assert (verdict.outcome, verdict.reason) == (outcome, reason)
    assert verdict.numbers["baseline_used"] == 0.0
    assert verdict.numbers["baseline_requests"] == (0 if baseline is None else baseline.requests)
    assert "p95_latency_ratio" not in verdict.numbers
    assert "confidence_drop" not in verdict.numbers
    assert verdict.numbers["p95_ms"] == candidate.p95_ms  # measured all the same
    if outcome is COMMIT:
        assert "not judged" in verdict.message


@pytest.mark.parametrize(
    ("candidate", "elapsed_s", "outcome"),
    [
        (stats(requests=50), EARLY, CONTINUE),
        (stats(requests=50), END, CONTINUE),
        (stats(requests=50), DEADLINE_S - 0.1, CONTINUE),
        (stats(requests=50), DEADLINE_S, UNOBSERVED),
        (stats(requests=0, p95_ms=None, confidence=None, drift={}), DEADLINE_S, UNOBSERVED),
        (stats(requests=99), 5000.0, UNOBSERVED),
        (stats(requests=100), END, COMMIT),
        (stats(requests=100), DEADLINE_S - 0.1, COMMIT),
        # Below min_requests errors are not judged (the rates are still reported).
        (stats(requests=50, errors=10), END, CONTINUE),
        (stats(requests=50, errors=10), DEADLINE_S, UNOBSERVED),
    ],
    ids=[
        "early",
        "extension_starts",
        "extension_before_deadline",
        "deadline",
        "no_traffic_at_all",
        "one_short_long_after",
        "just_enough_at_end",
        "enough_during_extension",
        "few_failing_requests_extension",
        "few_failing_requests_deadline",
    ],
)
def test_too_few_requests_extend_the_window_then_commit_unobserved(
    candidate: WindowStats, elapsed_s: float, outcome: ProbationOutcome
) -> None:
    verdict = judge(candidate, elapsed_s=elapsed_s)

    assert (verdict.outcome, verdict.reason) == (outcome, None)
    if candidate.requests:
        assert verdict.numbers["nonfinite_rate"] == candidate.nonfinite_rate


@pytest.mark.parametrize(
    ("candidate", "elapsed_s", "policy"),
    [
        (stats(requests=1, nonfinite=1), 0.0, DEFAULTS),
        (stats(requests=50, nonfinite=1), EARLY, DEFAULTS),
        (stats(requests=50, nonfinite=1), END, DEFAULTS),
        (stats(requests=50, nonfinite=1), DEADLINE_S, DEFAULTS),
        (stats(requests=99, nonfinite=1, errors=10), 5000.0, DEFAULTS),
        (stats(requests=50, nonfinite=1), END, ProbationPolicy(max_nonfinite_rate=0.01)),
        (stats(requests=50, nonfinite=1), END, ProbationPolicy(min_requests=0)),
    ],
    ids=[
        "first_request",
        "early",
        "window_extended",
        "end_of_extension",
        "long_after_with_errors",
        "above_a_nonzero_limit",
        "min_requests_zero",
    ],
)
def test_nan_with_fewer_than_min_requests_rolls_back_and_is_never_committed(
    candidate: WindowStats, elapsed_s: float, policy: ProbationPolicy
) -> None:
    verdict = judge(candidate, elapsed_s=elapsed_s, policy=policy)

    assert (verdict.outcome, verdict.reason) == (ROLLBACK, ProbationReason.NONFINITE_RATE)
    assert verdict.numbers["nonfinite_rate"] == candidate.nonfinite_rate
    assert verdict.message == (
        f"rollback: non-finite outputs in 1 of {candidate.requests} requests "
        f"(rate {candidate.nonfinite_rate:.4g} > max {policy.max_nonfinite_rate:g})"
    )


@pytest.mark.parametrize(
    ("candidate", "policy", "outcome"),
    [
        (stats(requests=100, errors=1), DEFAULTS, COMMIT),
        (stats(requests=100, errors=2), DEFAULTS, ROLLBACK),
        (stats(nonfinite=0), DEFAULTS, COMMIT),
        (stats(requests=100, nonfinite=1), ProbationPolicy(max_nonfinite_rate=0.01), COMMIT),
        (stats(requests=100, nonfinite=2), ProbationPolicy(max_nonfinite_rate=0.01), ROLLBACK),
        (stats(p95_ms=3.0), DEFAULTS, COMMIT),
        (stats(p95_ms=3.0 + 1e-9), DEFAULTS, ROLLBACK),
        (stats(confidence=0.5), ProbationPolicy(max_confidence_drop=0.4), COMMIT),
        (stats(confidence=0.5 - 1e-9), ProbationPolicy(max_confidence_drop=0.4), ROLLBACK),
        # The baseline's output PSI is 0.05: the limit is on the excess over it.
        (stats(drift={"x": 0.30}), DEFAULTS, COMMIT),
        (stats(drift={"x": 0.30 + 1e-9}), DEFAULTS, ROLLBACK),
    ],
    ids=[
        "error_rate_at",
        "error_rate_above",
        "nonfinite_zero_at_zero",
        "nonfinite_rate_at",
        "nonfinite_rate_above",
        "p95_ratio_at",
        "p95_ratio_above",
        "confidence_drop_at",
        "confidence_drop_above",
        "drift_at",
        "drift_above",
    ],
)
def test_a_value_exactly_at_its_threshold_passes(
    candidate: WindowStats, policy: ProbationPolicy, outcome: ProbationOutcome
) -> None:
    # Thresholds are the largest allowed values: only ">" trips. The baseline's p95 is
    # 2.0 ms and its confidence 0.9, so 3.0 ms is a ratio of exactly 1.5 and 0.5 a drop
    # of exactly 0.4, as floats too (0.9 - 0.5 == 0.4, 1 / 100 == 0.01).
    assert judge(candidate, elapsed_s=END, policy=policy).outcome is outcome


@pytest.mark.parametrize(
    ("requests", "elapsed_s", "outcome"),
    [
        (100, END, COMMIT),
        (99, END, CONTINUE),
        (99, DEADLINE_S, UNOBSERVED),
        (100, 299.999, CONTINUE),
    ],
    ids=["requests_at_minimum", "one_short", "at_deadline", "just_before_window_end"],
)
def test_time_and_request_boundaries_are_inclusive(
    requests: int, elapsed_s: float, outcome: ProbationOutcome
) -> None:
    assert judge(stats(requests=requests), elapsed_s=elapsed_s).outcome is outcome


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (
            stats(nonfinite=5, errors=5, p95_ms=9.0, confidence=0.1, drift={"x": 2.0}),
            ProbationReason.NONFINITE_RATE,
        ),
        (
            stats(errors=5, p95_ms=9.0, confidence=0.1, drift={"x": 2.0}),
            ProbationReason.ERROR_RATE,
        ),
        (stats(p95_ms=9.0, confidence=0.1, drift={"x": 2.0}), ProbationReason.P95_LATENCY_RATIO),
        (stats(confidence=0.1, drift={"x": 2.0}), ProbationReason.CONFIDENCE_DROP),
    ],
    ids=["nonfinite_first", "then_errors", "then_latency", "then_confidence"],
)
def test_first_tripped_check_is_the_reason_and_numbers_hold_them_all(
    candidate: WindowStats, reason: ProbationReason
) -> None:
    verdict = judge(candidate, elapsed_s=EARLY)

    assert (verdict.outcome, verdict.reason) == (ROLLBACK, reason)
    assert {
        "nonfinite_rate",
        "error_rate",
        "p95_latency_ratio",
        "confidence_drop",
        "drift_psi",
        "drift_psi.x",
        "baseline_p95_ms",
        "baseline_top1_confidence_mean",
    } <= set(verdict.numbers)


@pytest.mark.parametrize(
    ("candidate", "policy", "elapsed_s", "outcome"),
    [
        (stats(requests=1, nonfinite=1), ProbationPolicy(min_requests=0), EARLY, ROLLBACK),
        (
            stats(requests=0, p95_ms=None, confidence=None, drift={}),
            ProbationPolicy(min_requests=0),
            END,
            CONTINUE,
        ),
        (
            stats(requests=0, p95_ms=None, confidence=None, drift={}),
            ProbationPolicy(min_requests=0, max_extension_s=0.0),
            END,
            UNOBSERVED,
        ),
        (stats(requests=1), ProbationPolicy(min_requests=0), END, COMMIT),
    ],
    ids=["one_nan_request", "no_request_at_end", "no_request_no_extension", "one_request"],
)
def test_min_requests_zero_still_needs_one_request(
    candidate: WindowStats, policy: ProbationPolicy, elapsed_s: float, outcome: ProbationOutcome
) -> None:
    assert judge(candidate, elapsed_s=elapsed_s, policy=policy).outcome is outcome


@pytest.mark.parametrize(
    ("baseline", "candidate"),
    [
        (replace(BASELINE, p95_ms=0.0), stats(p95_ms=5.0)),
        (replace(BASELINE, top1_confidence_mean=None, class_counts=None), stats(confidence=0.1)),
        (BASELINE, stats(confidence=None)),
    ],
    ids=["baseline_p95_zero", "baseline_not_a_classifier", "candidate_not_a_classifier"],
)
def test_relative_check_without_a_figure_on_both_sides_is_skipped(
    baseline: WindowStats, candidate: WindowStats
) -> None:
    verdict = judge(candidate, elapsed_s=END, baseline=baseline)

    assert verdict.outcome is COMMIT
    assert verdict.numbers["baseline_used"] == 1.0


def test_rollback_message_names_the_numbers() -> None:
    verdict = judge(stats(p95_ms=5.0), elapsed_s=EARLY)

    assert verdict.message == (
        "rollback: p95 latency 5 ms is 2.5 times the previous model's 2 ms (max 1.5)"
    )
    assert verdict.numbers["p95_ms"] == 5.0
    assert verdict.numbers["baseline_p95_ms"] == 2.0


@pytest.mark.parametrize(
    ("latency_s", "outputs", "reason"),
    [
        (0.002, {"probs": np.array([[np.nan, 0.5]], dtype=np.float32)}, "nonfinite_rate"),
        (0.005, {"probs": np.array([[0.1, 0.9]], dtype=np.float32)}, "p95_latency_ratio"),
        (0.002, {"probs": np.array([[0.45, 0.55]], dtype=np.float32)}, "confidence_drop"),
    ],
    ids=["nan_outputs", "slower", "less_confident"],
)
def test_recorded_live_traffic_rolls_back_before_the_window_ends(
    latency_s: float, outputs: dict[str, np.ndarray], reason: str
) -> None:
    good = {"probs": np.array([[0.1, 0.9]], dtype=np.float32)}
    previous = StatsRecorder(reference=None, now_s=0.0)
    record_all(previous, [0.002] * 500, outputs=good)
    candidate = StatsRecorder(reference=None, now_s=600.0)
    record_all(candidate, [0.002] * 60, outputs=good)
    record_all(candidate, [latency_s] * 40, outputs=outputs)

    verdict = ProbationJudge(DEFAULTS, previous.cumulative()).judge(
        candidate.cumulative(), elapsed_s=EARLY
    )

    assert (verdict.outcome, verdict.reason) == (ROLLBACK, reason)


def test_one_recorded_nan_request_rolls_back_at_once() -> None:
    candidate = StatsRecorder(reference=None, now_s=0.0)
    good = {"probs": np.array([[0.1, 0.9]], dtype=np.float32)}
    record_all(candidate, [0.002] * 2, outputs=good)
    record_all(candidate, [0.002], outputs={"probs": np.array([[np.inf, 0.5]], np.float32)})

    verdict = ProbationJudge(DEFAULTS, None).judge(candidate.cumulative(), elapsed_s=1.0)

    assert (verdict.outcome, verdict.reason) == (ROLLBACK, ProbationReason.NONFINITE_RATE)
    assert verdict.numbers["requests"] == 3


FEW_REQUESTS = ProbationPolicy(min_requests=10)  # as the fleet scenarios set it
MANY_REQUESTS = ProbationPolicy(min_requests=500)
JUST_SHORT = MIN_DRIFT_REQUESTS - 1


@pytest.mark.parametrize(
    ("requests", "psi", "policy", "elapsed_s", "outcome", "judged"),
    [
        # PSI 0.30 over about 50 requests rolled a good first model back: now no verdict.
        (50, 0.30, FEW_REQUESTS, EARLY, CONTINUE, False),
        (50, 0.30, FEW_REQUESTS, END, COMMIT, False),
        (JUST_SHORT, 0.30, FEW_REQUESTS, END, COMMIT, False),
        (JUST_SHORT, 50.0, FEW_REQUESTS, EARLY, CONTINUE, False),
        (50, 0.30, DEFAULTS, DEADLINE_S, UNOBSERVED, False),
        (MIN_DRIFT_REQUESTS, 0.40, FEW_REQUESTS, EARLY, ROLLBACK, True),
        (MIN_DRIFT_REQUESTS, 0.30, FEW_REQUESTS, END, COMMIT, True),
        (5000, 0.40, FEW_REQUESTS, END, ROLLBACK, True),
        # A policy asking for more requests than the drift minimum: its minimum counts.
        (499, 0.40, MANY_REQUESTS, END, CONTINUE, False),
        (500, 0.40, MANY_REQUESTS, EARLY, ROLLBACK, True),
    ],
    ids=[
        "few_requests_early",
        "few_requests_at_window_end",
        "one_short_at_window_end",
        "one_short_huge_psi",
        "few_requests_at_deadline",
        "at_the_minimum",
        "at_the_minimum_and_threshold",
        "many_requests",
        "policy_minimum_one_short",
        "policy_minimum_reached",
    ],
)
def test_drift_is_judged_only_from_the_minimum_number_of_requests(
    requests: int,
    psi: float,
    policy: ProbationPolicy,
    elapsed_s: float,
    outcome: ProbationOutcome,
    judged: bool,
) -> None:
    candidate = stats(requests=requests, drift={"x": 0.01, "y": psi})

    verdict = judge(candidate, elapsed_s=elapsed_s, policy=policy)

    reason = ProbationReason.DRIFT if outcome is ROLLBACK else None
    assert (verdict.outcome, verdict.reason) == (outcome, reason)
    assert verdict.numbers["drift_psi"] == psi  # measured and reported either way
    assert verdict.numbers["drift_judged"] == float(judged)
    assert verdict.numbers["min_drift_requests"] == max(MIN_DRIFT_REQUESTS, policy.min_requests)
    assert ("output drift not judged" in verdict.message) == (not judged)


def test_drift_not_judged_is_said_with_its_numbers() -> None:
    verdict = judge(stats(requests=50, drift={"x": 0.3}), elapsed_s=END, policy=FEW_REQUESTS)

    assert verdict.message == (
        "commit: 50 requests in 300 s, no threshold tripped; "
        f"output drift not judged (PSI 0.3): 50 requests, fewer than {MIN_DRIFT_REQUESTS}"
    )


def test_without_a_drift_measurement_nothing_is_said_about_drift() -> None:
    verdict = judge(stats(requests=50, drift={}), elapsed_s=END, policy=FEW_REQUESTS)

    assert verdict.outcome is COMMIT
    assert "drift" not in verdict.message
    assert verdict.numbers["drift_judged"] == 0.0
    assert "drift_psi" not in verdict.numbers


def shifted_traffic(
    recorder: StatsRecorder, rng: np.random.Generator, count: int, *, outputs_shift: float
) -> None:
    """Rows far from the reference's inputs; outputs moved by ``outputs_shift`` logits."""
    for _ in range(count):
        x = rng.normal(loc=1.5, size=(1, 4)).astype(np.float32)
        logits = rng.normal(size=(1, 3))
        logits[0, 0] += outputs_shift
        recorder.record(
            latency_s=0.002, inputs={"x": x}, outputs={"probs": softmax(logits)}, error=False
        )


def test_input_drift_alone_never_rolls_back(
    rng: np.random.Generator, tabular_reference: ReferenceProfile
) -> None:
    # Both models see the same shifted inputs: the data moved, not the release.
    baseline = StatsRecorder(reference=tabular_reference, now_s=0.0)
    candidate = StatsRecorder(reference=tabular_reference, now_s=0.0)
    shifted_traffic(baseline, rng, 2 * MIN_DRIFT_REQUESTS, outputs_shift=0.0)
    shifted_traffic(candidate, rng, 2 * MIN_DRIFT_REQUESTS, outputs_shift=0.0)

    verdict = ProbationJudge(FEW_REQUESTS, baseline.cumulative()).judge(
        candidate.cumulative(), elapsed_s=END
    )

    assert verdict.numbers["drift_psi.x"] > 4 * FEW_REQUESTS.max_drift_psi  # inputs moved
    assert verdict.numbers["drift_judged"] == 1.0
    assert verdict.outcome is COMMIT


def test_output_drift_beyond_the_baseline_on_the_same_traffic_rolls_back(
    rng: np.random.Generator, tabular_reference: ReferenceProfile
) -> None:
    baseline = StatsRecorder(reference=tabular_reference, now_s=0.0)
    candidate = StatsRecorder(reference=tabular_reference, now_s=0.0)
    shifted_traffic(baseline, rng, 2 * MIN_DRIFT_REQUESTS, outputs_shift=0.0)
    shifted_traffic(candidate, rng, 2 * MIN_DRIFT_REQUESTS, outputs_shift=6.0)

    verdict = ProbationJudge(FEW_REQUESTS, baseline.cumulative()).judge(
        candidate.cumulative(), elapsed_s=END
    )

    assert (verdict.outcome, verdict.reason) == (ROLLBACK, ProbationReason.DRIFT)
    assert verdict.numbers["drift_excess"] > FEW_REQUESTS.max_drift_psi


def test_output_drift_of_a_first_model_is_not_judged_and_said_so(
    rng: np.random.Generator, tabular_reference: ReferenceProfile
) -> None:
    candidate = StatsRecorder(reference=tabular_reference, now_s=0.0)
    shifted_traffic(candidate, rng, 2 * MIN_DRIFT_REQUESTS, outputs_shift=6.0)

    verdict = ProbationJudge(FEW_REQUESTS, None).judge(candidate.cumulative(), elapsed_s=END)

    assert verdict.outcome is COMMIT
    assert verdict.numbers["drift_judged"] == 0.0
    assert "no baseline drift on this device" in verdict.message


def test_generated_profile_never_judges_drift(
    rng: np.random.Generator, tabular_reference: ReferenceProfile
) -> None:
    # The same histograms, but profiled from seeded synthetic inputs: they describe noise.
    synthetic = tabular_reference.model_copy(update={"source": "generated"})
    baseline = StatsRecorder(reference=synthetic, now_s=0.0)
    candidate = StatsRecorder(reference=synthetic, now_s=0.0)
    shifted_traffic(baseline, rng, 2 * MIN_DRIFT_REQUESTS, outputs_shift=0.0)
    shifted_traffic(candidate, rng, 2 * MIN_DRIFT_REQUESTS, outputs_shift=6.0)

    verdict = ProbationJudge(FEW_REQUESTS, baseline.cumulative()).judge(
        candidate.cumulative(), elapsed_s=END
    )

    assert candidate.cumulative().drift_psi == {}
    assert verdict.outcome is COMMIT
    assert verdict.numbers["drift_judged"] == 0.0


def labeled(candidate: WindowStats, labels: int, correct: int) -> WindowStats:
    return replace(candidate, labeled=labels, labeled_correct=correct)


@pytest.mark.parametrize(
    ("new", "before", "outcome"),
    [
        ((300, 210), (300, 270), ROLLBACK),  # 0.70 against 0.90: the labels say worse
        ((60, 51), (60, 54), COMMIT),  # 0.85 against 0.90 on 60 labels: noise
        ((20, 0), (300, 270), COMMIT),  # 20 labels say nothing yet
    ],
    ids=["worse", "within_noise", "too_few_labels"],
)
def test_labeled_accuracy_rolls_back_only_beyond_noise(
    new: tuple[int, int], before: tuple[int, int], outcome: ProbationOutcome
) -> None:
    verdict = judge(labeled(stats(), *new), elapsed_s=END, baseline=labeled(BASELINE, *before))

    assert verdict.outcome is outcome, verdict.message
    if outcome is ROLLBACK:
        assert verdict.reason is ProbationReason.LABEL_ACCURACY_DROP
        assert verdict.numbers["label_accuracy"] == pytest.approx(0.7)
        assert "beyond noise" in verdict.message


def test_sub_millisecond_latency_noise_does_not_roll_back_a_good_model() -> None:
    # A CI run rolled back a 0.2 ms model whose p95 read 0.97 ms on a loaded machine (4.8x):
    # the ratio tripped on scheduling noise, not on the model.
    tiny = replace(BASELINE, p95_ms=0.2025)
    noisy = stats(p95_ms=0.9668)
    policy = ProbationPolicy(max_p95_latency_ratio=4.0)

    verdict = judge(noisy, elapsed_s=END, baseline=tiny, policy=policy)

    assert verdict.outcome is COMMIT
    assert verdict.numbers["p95_latency_ratio"] > 4.0
    # The same ratio a millisecond or more above the baseline is a slower model.
    slower = judge(stats(p95_ms=5.0), elapsed_s=END, baseline=replace(tiny, p95_ms=1.0))
    assert (slower.outcome, slower.reason) == (ROLLBACK, ProbationReason.P95_LATENCY_RATIO)
