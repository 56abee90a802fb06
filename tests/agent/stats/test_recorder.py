"""Counting, windows, concurrency and the telemetry a recorder's windows become."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import numpy as np
import pytest

from agent.stats.latency import LATENCY_BOUNDS_MS
from agent.stats.recorder import StatsRecorder
from agent.stats.telemetry import MIN_WINDOW_S, to_telemetry_window
from protocol import ReferenceProfile, ReleaseRef, TelemetryWindow
from tensors import MIN_DRIFT_REQUESTS
from tests.agent.stats.profiles import record_all, roll_while_recording

WINDOW_START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
RELEASE = ReleaseRef(model="digits", version=3, sha256="ab" * 32)
PROBS = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)


def test_errors_are_counted_among_requests() -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    record_all(recorder, [0.001] * 7)
    record_all(recorder, [0.001] * 3, error=True)

    stats = recorder.cumulative()

    assert (stats.requests, stats.errors) == (10, 3)
    assert stats.error_rate == pytest.approx(0.3)
    assert sum(stats.latency_counts) == 10


@pytest.mark.parametrize(
    ("outputs", "nonfinite"),
    [
        ({"y": np.array([[1.0, np.nan]], dtype=np.float32)}, True),
        ({"y": np.array([np.inf]), "label": np.array([1])}, True),
        ({"y": np.array([-np.inf], dtype=np.float16)}, True),
        ({"y": np.array([[0.5, 0.5]]), "z": np.array([[np.nan]])}, True),
        ({"y": np.array([[0.5, 0.5]]), "label": np.array([0], dtype=np.int64)}, False),
        # Finite values whose float32 sum overflows are still finite.
        ({"y": np.full(4, 3e38, dtype=np.float32)}, False),
        ({"y": np.zeros((0, 3), dtype=np.float32)}, False),
        ({}, False),
        (None, False),
    ],
    ids=[
        "nan",
        "inf_beside_int",
        "fp16_minus_inf",
        "second_output",
        "finite_with_int",
        "overflowing_sum",
        "empty_batch",
        "no_outputs",
        "outputs_none",
    ],
)
def test_request_with_any_nonfinite_output_counts_once(
    outputs: dict[str, np.ndarray] | None, nonfinite: bool
) -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)

    recorder.record(latency_s=0.001, inputs=None, outputs=outputs, error=False)

    assert recorder.cumulative().nonfinite_outputs == int(nonfinite)


@pytest.mark.parametrize("latency_s", [float("nan"), -0.5], ids=["nan", "negative"])
def test_broken_latency_is_counted_as_zero(latency_s: float) -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)

    recorder.record(latency_s=latency_s, inputs=None, outputs=None, error=False)

    stats = recorder.cumulative()
    assert stats.latency_counts[0] == 1
    assert stats.p99_ms == 0.0


def test_window_is_not_closed_before_it_is_due() -> None:
    recorder = StatsRecorder(reference=None, window_s=10.0, now_s=100.0)
    record_all(recorder, [0.001])

    assert recorder.roll(109.9) is None
    assert recorder.cumulative().requests == 1


def test_due_window_closes_and_the_next_starts_where_it_ended() -> None:
    recorder = StatsRecorder(reference=None, window_s=10.0, now_s=100.0)
    record_all(recorder, [0.001] * 4)

    first = recorder.roll(110.0)
    record_all(recorder, [0.001] * 2)
    second = recorder.roll(123.5)

    assert first is not None
    assert second is not None
    assert (first.window_start_s, first.window_s, first.requests) == (100.0, 10.0, 4)
    # A late roll closes one window over the whole span, never a run of empty ones.
    assert (second.window_start_s, second.window_s, second.requests) == (110.0, 13.5, 2)
    assert recorder.roll(124.0) is None


def test_forced_roll_closes_an_early_window() -> None:
    recorder = StatsRecorder(reference=None, window_s=10.0, now_s=0.0)
    record_all(recorder, [0.001])

    stats = recorder.roll(2.5, force=True)

    assert stats is not None
    assert (stats.window_s, stats.requests) == (2.5, 1)


def test_cumulative_spans_every_window_since_creation() -> None:
    recorder = StatsRecorder(reference=None, window_s=10.0, now_s=50.0)
    record_all(recorder, [0.001] * 3)
    recorder.roll(60.0)
    record_all(recorder, [0.002] * 5, outputs={"probs": PROBS}, error=True)
    recorder.roll(70.0)
    record_all(recorder, [0.004] * 2)

    total = recorder.cumulative(now_s=75.0)

    assert (total.window_start_s, total.window_s) == (50.0, 25.0)
    assert (total.requests, total.errors, total.classified_rows) == (10, 5, 5)
    assert total.class_counts == (0, 5, 0)
    assert recorder.cumulative().window_s == 20.0  # without now_s: up to the last roll


def test_concurrent_recording_and_rolling_lose_nothing() -> None:
    threads_n, per_thread = 8, 3000
    recorder = StatsRecorder(reference=None, window_s=0.5, now_s=0.0)
    rows = [np.eye(threads_n, dtype=np.float32)[[t]] for t in range(threads_n)]
    start = threading.Barrier(threads_n + 1)
    windows = []

    def serve(thread: int) -> None:
        start.wait()
        for i in range(per_thread):
            recorder.record(
                latency_s=0.0001 * (1 + thread),
                inputs=None,
                outputs={"probs": rows[thread]},
                error=i % 10 == 0,
            )

    workers = [threading.Thread(target=serve, args=(t,)) for t in range(threads_n)]
    windows.extend(roll_while_recording(recorder, workers, start))

    total = recorder.cumulative()
    assert total.requests == sum(w.requests for w in windows) == threads_n * per_thread
    assert total.errors == sum(w.errors for w in windows) == threads_n * per_thread // 10
    assert total.class_counts == (per_thread,) * threads_n
    assert sum(total.latency_counts) == threads_n * per_thread


def test_telemetry_window_validates_and_round_trips(tabular_reference: ReferenceProfile) -> None:
    recorder = StatsRecorder(reference=tabular_reference, now_s=0.0)
    inputs = {"x": np.zeros((1, 4), dtype=np.float32)}
    record_all(recorder, [0.0002, 0.0004, 0.03] * 40, inputs=inputs, outputs={"probs": PROBS})
    record_all(recorder, [0.001], error=True)
    stats = recorder.roll(10.0)
    assert stats is not None

    window = to_telemetry_window(stats, model="digits", release=RELEASE, window_start=WINDOW_START)

    assert TelemetryWindow.from_payload(window.to_payload()) == window
    assert window.latency is not None
    assert len(window.latency.counts) == len(window.latency.bounds_ms) + 1
    assert window.latency.bounds_ms == list(LATENCY_BOUNDS_MS)
    assert (window.requests, window.errors, window.class_counts) == (121, 1, [0, 120, 0])
    assert window.top1_confidence_mean == pytest.approx(0.7)
    assert set(window.drift_psi) == {"x", "probs"}
    assert window.output_drift_psi is None  # 121 requests: too few to judge
    # The counts behind the PSIs go out whatever the window's size, for the controller
    # to pool: 4 input values and 3 probabilities per classified request.
    assert sum(window.drift_counts["x"]) == 120 * 4
    assert sum(window.drift_counts["probs"]) == 120 * 3


def test_output_drift_reaches_the_wire_only_from_the_minimum_requests(
    tabular_reference: ReferenceProfile,
) -> None:
    recorder = StatsRecorder(reference=tabular_reference, now_s=0.0)
    inputs = {"x": np.full((1, 4), 9.0, dtype=np.float32)}  # far from the reference inputs
    record_all(recorder, [0.001] * MIN_DRIFT_REQUESTS, inputs=inputs, outputs={"probs": PROBS})
    stats = recorder.roll(10.0)
    assert stats is not None

    window = to_telemetry_window(stats, model="digits", release=RELEASE, window_start=WINDOW_START)

    assert window.output_drift_psi == pytest.approx(stats.output_drift_psi["probs"])
    assert window.drift_psi["x"] > window.output_drift_psi  # input drift: reported, not gated


def test_empty_window_has_no_latency_or_classifier_figures() -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    stats = recorder.roll(10.0)
    assert stats is not None

    window = to_telemetry_window(stats, model="digits", release=None, window_start=WINDOW_START)

    assert (window.requests, window.latency, window.top1_confidence_mean) == (0, None, None)
    assert window.class_counts is None
    assert window.drift_psi == {}
    assert window.drift_counts == {}


def test_zero_length_window_still_has_a_positive_length_on_the_wire() -> None:
    recorder = StatsRecorder(reference=None, now_s=5.0)
    record_all(recorder, [0.001])
    stats = recorder.roll(5.0, force=True)
    assert stats is not None

    window = to_telemetry_window(stats, model="m", release=None, window_start=WINDOW_START)

    assert stats.window_s == 0.0
    assert window.window_s == MIN_WINDOW_S


def test_confidence_of_a_width_matched_non_probability_is_clipped() -> None:
    hint = ReferenceProfile(class_distribution=[0.5, 0.5])
    recorder = StatsRecorder(reference=hint, now_s=0.0)
    record_all(recorder, [0.001], outputs={"logits": np.array([[3.0, -1.0]], dtype=np.float32)})

    stats = recorder.cumulative()
    window = to_telemetry_window(stats, model="m", release=None, window_start=WINDOW_START)

    assert stats.top1_confidence_mean == 3.0
    assert window.top1_confidence_mean == 1.0


def test_window_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_s"):
        StatsRecorder(reference=None, window_s=0.0, now_s=0.0)


def test_recorders_of_one_profile_share_its_drift_bins(
    tabular_reference: ReferenceProfile,
) -> None:
    first = StatsRecorder(reference=tabular_reference, now_s=0.0)
    second = StatsRecorder(reference=tabular_reference, now_s=5.0)
    copy = StatsRecorder(reference=tabular_reference.model_copy(), now_s=0.0)

    # Built once per profile object (the serving host keeps one per check bundle): a
    # process of thousands of agents holds one set of bins per release.
    assert second._drift_bins is first._drift_bins
    assert copy._drift_bins is not first._drift_bins
    assert copy._drift_bins.keys() == first._drift_bins.keys()
