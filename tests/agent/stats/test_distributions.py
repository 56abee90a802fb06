"""Latency percentiles, classifier figures and drift (PSI) from what a recorder saw."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.stats.latency import LATENCY_BOUNDS_MS
from agent.stats.recorder import MIN_DRIFT_VALUES, StatsRecorder
from protocol import Histogram, ReferenceProfile
from tensors.profile import population_stability_index
from tests.agent.stats.profiles import record_all, softmax

# Consecutive bounds are 10**0.1 apart: the bucket above is at most this much wider.
BUCKET_RATIO = 10**0.1 * 1.01


def bucket_width_ms(value_ms: float) -> float:
    index = bisect_left(LATENCY_BOUNDS_MS, value_ms)
    lower = LATENCY_BOUNDS_MS[index - 1] if index else 0.0
    return LATENCY_BOUNDS_MS[index] - lower


@pytest.mark.parametrize(
    "draw_s",
    [
        lambda rng: np.full(1000, 0.00013),
        lambda rng: rng.uniform(0.0001, 0.0003, 5000),
        lambda rng: rng.lognormal(np.log(0.002), 0.5, 5000),
        lambda rng: np.concatenate([rng.normal(0.001, 1e-5, 9000), rng.normal(0.05, 1e-3, 1000)]),
        lambda rng: 10 ** rng.uniform(-4, 0.5, 5000),
    ],
    ids=["constant", "uniform_sub_ms", "lognormal_2ms", "bimodal_slow_tail", "log_uniform"],
)
def test_percentiles_are_within_a_bucket_of_the_truth(
    draw_s: Callable[[np.random.Generator], np.ndarray], rng: np.random.Generator
) -> None:
    latencies_s = draw_s(rng)
    recorder = StatsRecorder(reference=None, now_s=0.0)
    record_all(recorder, latencies_s.tolist())

    stats = recorder.cumulative()

    for q, estimate in ((50, stats.p50_ms), (95, stats.p95_ms), (99, stats.p99_ms)):
        truth_ms = float(np.percentile(latencies_s, q)) * 1000
        assert estimate is not None
        assert abs(estimate - truth_ms) <= bucket_width_ms(truth_ms) * BUCKET_RATIO, q


def test_constant_latency_gives_itself_back() -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    record_all(recorder, [0.000137] * 50)

    stats = recorder.cumulative()

    assert stats.p50_ms == stats.p95_ms == stats.p99_ms == pytest.approx(0.137)


def test_latency_above_every_bound_ends_at_the_maximum() -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    record_all(recorder, [0.001] * 90 + [30.0] * 10)

    stats = recorder.cumulative()

    assert stats.latency_counts[-1] == 10
    assert 1.0 <= stats.p50_ms <= 1.256  # type: ignore[operator]
    assert LATENCY_BOUNDS_MS[-1] < stats.p99_ms <= 30_000.0  # type: ignore[operator]


@given(st.lists(st.floats(min_value=0.0, max_value=20.0), min_size=1, max_size=300))
def test_percentile_lies_in_the_bucket_of_the_nearest_rank(latencies_s: list[float]) -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    record_all(recorder, latencies_s)

    stats = recorder.cumulative()

    ordered_ms = sorted(s * 1000.0 for s in latencies_s)
    for q, estimate in ((0.50, stats.p50_ms), (0.95, stats.p95_ms), (0.99, stats.p99_ms)):
        nearest_rank = ordered_ms[max(math.ceil(q * len(ordered_ms)), 1) - 1]
        index = bisect_left(LATENCY_BOUNDS_MS, nearest_rank)
        lower = max(LATENCY_BOUNDS_MS[index - 1] if index else 0.0, ordered_ms[0])
        upper = min(
            LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else math.inf,
            ordered_ms[-1],
        )
        assert estimate is not None
        assert lower - 1e-9 <= estimate <= upper + 1e-9
    assert stats.p50_ms <= stats.p95_ms <= stats.p99_ms  # type: ignore[operator]


@pytest.mark.parametrize(
    ("reference", "outputs", "chosen"),
    [
        (None, {"probs": np.array([[0.2, 0.8]], dtype=np.float32)}, "probs"),
        (None, {"label": np.array([1]), "probs": np.array([[0.2, 0.3, 0.5]])}, "probs"),
        (None, {"logits": np.array([[2.0, -1.0]], dtype=np.float32)}, None),
        (None, {"score": np.array([[1.0]], dtype=np.float32)}, None),
        (None, {"probs": np.array([[1, 0]], dtype=np.int64)}, None),
        (None, {"probs": np.array([[0.2, 0.8]], dtype=np.float32).reshape(1, 1, 2)}, None),
        (
            ReferenceProfile(class_distribution=[0.3, 0.7]),
            {"logits": np.array([[2.0, -1.0]], dtype=np.float32)},
            "logits",
        ),
        (
            ReferenceProfile(class_distribution=[0.2, 0.3, 0.5]),
            {"pair": np.array([[0.4, 0.6]]), "triple": np.array([[0.1, 0.1, 0.8]])},
            "triple",
        ),
    ],
    ids=[
        "softmax",
        "softmax_beside_label",
        "logits",
        "one_column",
        "integer",
        "three_d",
        "hinted_width_logits",
        "hinted_width_picks_among_probabilities",
    ],
)
def test_classifier_output_is_detected(
    reference: ReferenceProfile | None, outputs: dict[str, np.ndarray], chosen: str | None
) -> None:
    recorder = StatsRecorder(reference=reference, now_s=0.0)

    recorder.record(latency_s=0.001, inputs=None, outputs=outputs, error=False)

    assert recorder.classifier_output == chosen
    assert (recorder.cumulative().class_counts is None) == (chosen is None)


def test_classifier_is_decided_on_the_first_finite_outputs() -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    broken = {"probs": np.array([[np.nan, 0.5]], dtype=np.float32)}
    empty = {"probs": np.zeros((0, 2), dtype=np.float32)}

    record_all(recorder, [0.001], outputs=broken)
    record_all(recorder, [0.001], outputs=empty)
    undecided = recorder.classifier_output
    record_all(recorder, [0.001], outputs={"probs": np.array([[0.25, 0.75]], dtype=np.float32)})

    assert undecided is None
    assert recorder.classifier_output == "probs"
    assert recorder.cumulative().class_counts == (0, 1)


def test_class_counts_and_confidence_cover_every_finite_row() -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    batch = np.array([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]], dtype=np.float64)
    with_nan_row = np.array([[0.9, 0.05, 0.05], [np.nan, 0.5, 0.5]], dtype=np.float64)

    record_all(recorder, [0.001], outputs={"probs": batch})
    record_all(recorder, [0.001], outputs={"probs": batch[[1]]})
    record_all(recorder, [0.001], outputs={"probs": with_nan_row})

    stats = recorder.cumulative()
    assert stats.class_counts == (2, 1, 2)
    assert stats.classified_rows == 5
    assert stats.top1_confidence_mean == pytest.approx((0.6 + 0.8 + 0.5 + 0.8 + 0.9) / 5)
    assert stats.nonfinite_outputs == 1


@pytest.mark.parametrize(
    ("live", "reference", "psi"),
    [
        ([25, 75], [0.25, 0.75], 0.0),
        ([50, 50], [0.25, 0.75], 0.25 * math.log(2) + 0.25 * math.log(1.5)),
        # An empty live bin is floored at 1e-4: large, but finite.
        ([100, 0], [0.5, 0.5], 0.5 * math.log(2) + 0.4999 * math.log(5000)),
        ([10, 30], [2.0, 6.0], 0.0),  # reference fractions are normalised
    ],
    ids=["identical", "shifted", "empty_live_bin", "unnormalised_reference"],
)
def test_population_stability_index(live: list[int], reference: list[float], psi: float) -> None:
    assert population_stability_index(live, reference) == pytest.approx(psi, abs=1e-12)


@given(
    st.lists(st.integers(min_value=0, max_value=1000), min_size=2, max_size=20).filter(any),
    st.data(),
)
def test_psi_is_non_negative_and_zero_for_the_reference_itself(
    live: list[int], data: st.DataObject
) -> None:
    reference = data.draw(
        st.lists(
            st.floats(min_value=0.0, max_value=1.0), min_size=len(live), max_size=len(live)
        ).filter(lambda f: sum(f) > 0)
    )

    assert population_stability_index(live, reference) >= -1e-12
    assert population_stability_index(live, [float(c) for c in live]) == pytest.approx(0.0)


def test_psi_refuses_mismatched_or_empty_histograms() -> None:
    with pytest.raises(ValueError, match="bins"):
        population_stability_index([1, 2, 3], [0.5, 0.5])
    with pytest.raises(ValueError, match="values"):
        population_stability_index([0, 0], [0.5, 0.5])


def test_live_data_from_the_reference_distribution_has_no_drift(
    tabular_reference: ReferenceProfile, rng: np.random.Generator
) -> None:
    recorder = StatsRecorder(reference=tabular_reference, now_s=0.0)
    for _ in range(500):
        x = rng.normal(size=(1, 4)).astype(np.float32)
        probs = softmax(rng.normal(size=(1, 3)))
        recorder.record(latency_s=0.001, inputs={"x": x}, outputs={"probs": probs}, error=False)

    drift = recorder.cumulative().drift_psi

    assert set(drift) == {"x", "probs"}
    assert drift["x"] < 0.05
    assert drift["probs"] < 0.05


@pytest.mark.parametrize(
    ("shift", "scale"), [(1.5, 1.0), (0.0, 3.0), (100.0, 1.0)], ids=["mean", "spread", "outside"]
)
def test_shifted_live_inputs_drift(
    tabular_reference: ReferenceProfile, rng: np.random.Generator, shift: float, scale: float
) -> None:
    recorder = StatsRecorder(reference=tabular_reference, now_s=0.0)
    for _ in range(200):
        x = (rng.normal(size=(1, 4)) * scale + shift).astype(np.float32)
        recorder.record(latency_s=0.001, inputs={"x": x}, outputs=None, error=False)

    psi = recorder.cumulative().drift_psi["x"]

    assert 0.25 < psi < math.inf


def test_drift_needs_enough_values(tabular_reference: ReferenceProfile) -> None:
    recorder = StatsRecorder(reference=tabular_reference, now_s=0.0)
    x = np.zeros((1, 4), dtype=np.float32)  # four values per request
    record_all(recorder, [0.001] * (MIN_DRIFT_VALUES // 4 - 1), inputs={"x": x})
    too_few = recorder.cumulative().drift_psi
    record_all(recorder, [0.001], inputs={"x": x})

    assert "x" not in too_few
    assert "x" in recorder.cumulative().drift_psi


def test_nonfinite_and_non_numeric_values_are_left_out_of_drift(
    tabular_reference: ReferenceProfile,
) -> None:
    recorder = StatsRecorder(reference=tabular_reference, now_s=0.0)
    nan_x = np.full((1, 4), np.nan, dtype=np.float32)
    text_probs = np.array([["a", "b", "c"]])

    record_all(recorder, [0.001] * 100, inputs={"x": nan_x}, outputs={"probs": text_probs})

    stats = recorder.cumulative()
    assert stats.drift_psi == {}
    assert stats.requests == 100


def test_reference_histogram_without_mass_is_ignored() -> None:
    empty = Histogram(bin_edges=[0.0, 1.0, 2.0], fractions=[0.0, 0.0])
    recorder = StatsRecorder(reference=ReferenceProfile(inputs={"x": empty}), now_s=0.0)
    record_all(recorder, [0.001] * 100, inputs={"x": np.ones((1, 4), dtype=np.float32)})

    stats = recorder.roll(10.0)

    assert stats is not None
    assert stats.drift_psi == {}
