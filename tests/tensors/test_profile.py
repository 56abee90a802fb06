"""The profile rules both sides apply: histogram bins, the classifier rule, PSI."""

from __future__ import annotations

import numpy as np
import pytest

from tensors.profile import (
    HISTOGRAM_BINS,
    PROBABILITY_SLACK,
    ReferenceBins,
    are_class_probabilities,
    histogram,
    population_stability_index,
)

RNG_SEED = 20261130


def reference_of(values: np.ndarray) -> ReferenceBins:
    hist = histogram(values)
    assert hist is not None
    return ReferenceBins.of(hist["bin_edges"], hist["fractions"])


def test_histogram_has_equal_width_bins_from_min_to_max() -> None:
    hist = histogram(np.arange(101.0))
    assert hist is not None
    assert hist["bin_edges"] == pytest.approx(np.linspace(0.0, 100.0, HISTOGRAM_BINS + 1))
    assert hist["fractions"] == pytest.approx([10 / 101] * 9 + [11 / 101])


def test_histogram_leaves_out_what_is_not_finite() -> None:
    hist = histogram(np.array([0.0, 1.0, np.nan, np.inf, -np.inf]))
    assert hist is not None
    assert (hist["bin_edges"][0], hist["bin_edges"][-1]) == (0.0, 1.0)
    assert sum(hist["fractions"]) == pytest.approx(1.0)


def test_a_constant_gets_bins_one_unit_wide_around_it() -> None:
    hist = histogram(np.full(7, 3.0))
    assert hist is not None
    assert (hist["bin_edges"][0], hist["bin_edges"][-1]) == (2.5, 3.5)


def test_live_values_are_counted_as_the_reference_was() -> None:
    values = np.random.default_rng(RNG_SEED).normal(size=10_000)
    hist = histogram(values)
    assert hist is not None
    counts = reference_of(values).count(values)
    assert counts is not None
    assert counts.tolist() == [round(f * values.size) for f in hist["fractions"]]


def test_values_outside_the_reference_go_to_the_edge_bins() -> None:
    bins = reference_of(np.linspace(0.0, 1.0, 11))
    counts = bins.count(np.array([-5.0, 0.0, 1.0, 7.0, np.nan]))
    assert counts is not None
    assert counts.tolist() == [2] + [0] * (HISTOGRAM_BINS - 2) + [2]


def test_nothing_finite_counts_as_nothing() -> None:
    assert reference_of(np.arange(5.0)).count(np.array([np.nan, np.inf])) is None


def softmax(logits: np.ndarray, dtype: type[np.floating]) -> np.ndarray:  # type: ignore[type-arg]
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_softmax_rows_are_class_probabilities(dtype: type[np.floating]) -> None:  # type: ignore[type-arg]
    logits = np.random.default_rng(RNG_SEED).normal(size=(64, 10))
    assert are_class_probabilities(softmax(logits, dtype))


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(0.9 * PROBABILITY_SLACK, True), (1.1 * PROBABILITY_SLACK, False)],
)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rows_must_sum_to_one_within_the_slack(offset: float, expected: bool, sign: float) -> None:
    rows = np.array([[0.25, 0.25, 0.5], [0.1, 0.2, 0.7]])
    rows[:, 2] += sign * offset
    assert are_class_probabilities(rows) is expected


@pytest.mark.parametrize(
    ("low", "expected"),
    [(-0.9 * PROBABILITY_SLACK, True), (-1.1 * PROBABILITY_SLACK, False)],
)
def test_values_must_stay_in_zero_to_one_within_the_slack(low: float, expected: bool) -> None:
    rows = np.array([[low, 1.0 - low]])
    assert are_class_probabilities(rows) is expected


@pytest.mark.parametrize(
    "scores",
    [
        np.array([0.2, 0.8]),  # 1-D
        np.array([[1.0], [1.0]]),  # one class
        np.empty((0, 3)),  # no rows
        np.array([[0, 1], [1, 0]]),  # integers
        np.array([[0.5, np.nan]]),
        np.array([[np.inf, 0.0]]),
        np.array([[0.5, 0.5, 0.0]]).reshape(1, 1, 3),  # 3-D
    ],
)
def test_other_arrays_are_not_class_probabilities(scores: np.ndarray) -> None:
    assert not are_class_probabilities(scores)


def test_psi_of_identical_distributions_is_zero() -> None:
    values = np.random.default_rng(RNG_SEED).normal(size=20_000)
    reference = reference_of(values)
    counts = reference.count(values)
    assert counts is not None
    assert population_stability_index(counts, reference.fractions) == pytest.approx(0.0, abs=1e-9)


def test_psi_of_a_shifted_distribution_is_large() -> None:
    rng = np.random.default_rng(RNG_SEED)
    reference = reference_of(rng.normal(size=20_000))
    counts = reference.count(rng.normal(loc=1.0, size=20_000))
    assert counts is not None
    assert population_stability_index(counts, reference.fractions) > 0.25


def test_psi_needs_as_many_bins_and_values_on_both_sides() -> None:
    with pytest.raises(ValueError, match="bins"):
        population_stability_index([1, 2, 3], [0.5, 0.5])
    with pytest.raises(ValueError, match="values"):
        population_stability_index([0, 0], [0.5, 0.5])
