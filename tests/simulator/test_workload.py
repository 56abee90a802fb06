"""The digits workload: request times at the spec's rate, exact rows before drift, noise
growing linearly after it, outputs a valid model input, all from the given generator."""

from __future__ import annotations

import random
import statistics

import numpy as np
import pytest

from simulator.scenario import WorkloadSpec
from simulator.workload import DigitsWorkload, digits_features

DRAWS = 20_000


def workload(seed: int = 0, **spec: float | None) -> DigitsWorkload:
    return DigitsWorkload(WorkloadSpec.model_validate(spec), random.Random(seed))


@pytest.fixture(scope="module")
def digit_rows() -> set[bytes]:
    return {row.tobytes() for row in digits_features()}


@pytest.mark.parametrize("requests_per_s", [0.5, 4.0, 200.0])
def test_requests_per_s_sets_the_mean_delay(requests_per_s: float) -> None:
    requests = workload(requests_per_s=requests_per_s)

    delays = [requests.next_delay_s() for _ in range(DRAWS)]

    # The sample mean of 20 000 exponential draws is within 5 % (7 standard errors).
    assert statistics.fmean(delays) == pytest.approx(1.0 / requests_per_s, rel=0.05)
    assert min(delays) >= 0.0


@pytest.mark.parametrize("elapsed_s", [0.0, 10.0, 29.99, 30.0])
def test_inputs_are_exact_digits_rows_until_drift_starts(
    digit_rows: set[bytes], elapsed_s: float
) -> None:
    requests = workload(drift_start_s=30.0, drift_per_min=0.6)

    for _ in range(50):
        assert requests.next_input(elapsed_s)[0].tobytes() in digit_rows


def test_inputs_are_exact_rows_without_a_drift_start(digit_rows: set[bytes]) -> None:
    requests = workload(drift_per_min=5.0)

    assert all(requests.next_input(3600.0)[0].tobytes() in digit_rows for _ in range(50))


@pytest.mark.parametrize(
    ("elapsed_s", "sigma"),
    [(0.0, 0.0), (29.0, 0.0), (30.0, 0.0), (60.0, 0.3), (90.0, 0.6), (150.0, 1.2)],
)
def test_drift_sigma_grows_linearly_after_the_start(elapsed_s: float, sigma: float) -> None:
    requests = workload(drift_start_s=30.0, drift_per_min=0.6)

    assert requests.drift_sigma(elapsed_s) == pytest.approx(sigma)


def test_drifted_inputs_move_away_from_the_rows(digit_rows: set[bytes]) -> None:
    requests = workload(drift_start_s=0.0, drift_per_min=0.6)

    drifted = [requests.next_input(60.0)[0].tobytes() for _ in range(50)]

    assert not any(row in digit_rows for row in drifted)


@pytest.mark.parametrize("elapsed_s", [0.0, 60.0, 6000.0])
def test_inputs_are_float32_rows_in_the_unit_interval(elapsed_s: float) -> None:
    requests = workload(drift_start_s=0.0, drift_per_min=6.0)

    for _ in range(100):
        features = requests.next_input(elapsed_s)
        assert features.dtype == np.float32
        assert features.shape == (1, 64)
        assert np.all((features >= 0.0) & (features <= 1.0))


def sequence(seed: int) -> list[tuple[float, bytes]]:
    requests = workload(seed, requests_per_s=3.0, drift_start_s=5.0, drift_per_min=1.0)
    return [
        (requests.next_delay_s(), requests.next_input(elapsed_s=float(i)).tobytes())
        for i in range(20)
    ]


def test_same_seed_gives_the_same_requests() -> None:
    assert sequence(11) == sequence(11)


def test_different_seed_gives_different_requests() -> None:
    assert sequence(11) != sequence(12)


def test_zero_rate_the_scenario_accepts_gives_a_delay() -> None:
    requests = workload(requests_per_s=0.0)

    assert requests.next_delay_s() >= 0.0
