"""Requests measured in batches give the figures one request at a time gives, and hold
no more memory than the bound.

The per-request figures come from the same recorder API: reading ``cumulative`` after every
``record`` measures each request alone (a batch of one).
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pytest

from agent.stats.recorder import (
    MAX_PENDING_REQUEST_BYTES,
    PENDING_REQUESTS,
    StatsRecorder,
    WindowStats,
)
from protocol import ReferenceProfile
from tests.agent.stats.profiles import histogram_of, roll_while_recording, softmax

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Request:
    latency_s: float
    inputs: Arrays | None
    outputs: Arrays | None
    error: bool


def probabilities(rng: np.random.Generator, rows: int, width: int = 3) -> np.ndarray:
    return softmax(rng.normal(size=(rows, width)))


def spoil(rng: np.random.Generator, array: np.ndarray, chance: float) -> np.ndarray:
    """Put a NaN or an infinity at a random place of a float array, with ``chance``."""
    if array.size and array.dtype.kind == "f" and rng.random() < chance:
        array = array.copy()
        array.flat[rng.integers(array.size)] = rng.choice([np.nan, np.inf, -np.inf])
    return array


def latency(rng: np.random.Generator) -> float:
    # Now and then a broken timer: NaN or negative, counted as zero.
    return float(
        rng.choice([rng.lognormal(np.log(0.002), 1.0), np.nan, -1.0], p=[0.96, 0.02, 0.02])
    )


def softmax_with_labels(rng: np.random.Generator) -> Request:
    rows = int(rng.integers(1, 4))
    probs = spoil(rng, probabilities(rng, rows), 0.05)
    outputs = {"label": probs.argmax(axis=1).astype(np.int64), "probs": probs}
    return Request(latency(rng), None, outputs, error=False)


def errors_and_gaps(rng: np.random.Generator) -> Request:
    kind = rng.integers(4)
    if kind == 0:
        return Request(latency(rng), None, None, error=True)
    if kind == 1:
        return Request(latency(rng), None, {}, error=False)
    return Request(latency(rng), None, {"probs": spoil(rng, probabilities(rng, 1), 0.1)}, False)


def mixed_dtypes_and_shapes(rng: np.random.Generator) -> Request:
    dtype = rng.choice([np.float16, np.float32, np.float64])
    rows = int(rng.integers(0, 3))  # empty batches too
    width = int(rng.choice([3, 3, 3, 4]))  # now and then the wrong width
    outputs: Arrays = {"probs": spoil(rng, probabilities(rng, rows, width).astype(dtype), 0.1)}
    if rng.random() < 0.3:
        outputs["score"] = spoil(rng, np.array(rng.normal()), 0.2)  # 0-d
    if rng.random() < 0.3:
        outputs["names"] = np.array(["a", "b"])
    if rng.random() < 0.2:
        outputs["logits"] = spoil(rng, rng.normal(size=(rows, 5)), 0.3)
    return Request(latency(rng), None, outputs, error=bool(rng.random() < 0.1))


def broken_before_classifier(rng: np.random.Generator) -> Request:
    # Mostly one NaN in a few rows: the classifier is decided late, in the middle of a
    # batch, and the finite rows of the requests before that are not classified.
    probs = spoil(rng, probabilities(rng, int(rng.integers(1, 4))), 0.9)
    return Request(latency(rng), None, {"probs": probs}, error=False)


def tabular_with_drift(rng: np.random.Generator) -> Request:
    rows = int(rng.integers(1, 3))
    x = spoil(rng, rng.normal(1.0, 1.0, size=(rows, 4)).astype(np.float32), 0.05)
    probs = spoil(rng, probabilities(rng, rows), 0.05)
    return Request(latency(rng), {"x": x}, {"probs": probs}, error=False)


def now_and_then_huge(rng: np.random.Generator) -> Request:
    rows = int(rng.choice([1, 1, 1, MAX_PENDING_REQUEST_BYTES]))  # a huge one is measured alone
    return Request(latency(rng), None, {"probs": spoil(rng, probabilities(rng, rows), 0.1)}, False)


@pytest.fixture
def reference(rng: np.random.Generator) -> ReferenceProfile:
    return ReferenceProfile(
        source="validation",
        inputs={"x": histogram_of(rng.normal(size=(2000, 4)))},
        outputs={"probs": histogram_of(probabilities(rng, 2000))},
        class_distribution=[0.3, 0.3, 0.4],
    )


def recorded(
    requests: list[Request], reference: ReferenceProfile | None, *, alone: bool
) -> WindowStats:
    recorder = StatsRecorder(reference=reference, now_s=0.0)
    for request in requests:
        recorder.record(
            latency_s=request.latency_s,
            inputs=request.inputs,
            outputs=request.outputs,
            error=request.error,
        )
        if alone:
            recorder.cumulative()
    return recorder.cumulative(now_s=10.0)


@pytest.mark.parametrize(
    ("draw", "with_reference"),
    [
        (softmax_with_labels, False),
        (softmax_with_labels, True),
        (errors_and_gaps, False),
        (mixed_dtypes_and_shapes, False),
        (mixed_dtypes_and_shapes, True),
        (broken_before_classifier, False),
        (tabular_with_drift, True),
        (now_and_then_huge, False),
    ],
    ids=[
        "softmax_with_labels",
        "softmax_with_labels_hinted",
        "errors_and_gaps",
        "mixed_dtypes_and_shapes",
        "mixed_dtypes_and_shapes_hinted",
        "broken_before_classifier",
        "tabular_with_drift",
        "now_and_then_huge",
    ],
)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("count", [1, PENDING_REQUESTS - 1, 2 * PENDING_REQUESTS + 37])
def test_batched_statistics_equal_per_request_statistics(
    draw: Callable[[np.random.Generator], Request],
    with_reference: bool,
    seed: int,
    count: int,
    reference: ReferenceProfile,
) -> None:
    rng = np.random.default_rng(seed)
    requests = [draw(rng) for _ in range(count)]
    profile = reference if with_reference else None

    batched = recorded(requests, profile, alone=False)
    alone = recorded(requests, profile, alone=True)

    # Counts are the same integers; only the confidence sum may round differently.
    assert replace(batched, top1_confidence_mean=None) == replace(alone, top1_confidence_mean=None)
    if alone.top1_confidence_mean is None:
        assert batched.top1_confidence_mean is None
    else:
        assert batched.top1_confidence_mean == pytest.approx(alone.top1_confidence_mean, rel=1e-9)
    assert batched.requests == count
    assert batched.nonfinite_outputs == sum(
        any(a.dtype.kind == "f" and not np.isfinite(a).all() for a in r.outputs.values())
        for r in requests
        if r.outputs
    )


def test_huge_output_is_not_kept_after_record() -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    huge = np.zeros((4, MAX_PENDING_REQUEST_BYTES), dtype=np.float32)
    huge[0, 0] = np.nan
    kept = weakref.ref(huge)

    recorder.record(latency_s=0.001, inputs=None, outputs={"y": huge}, error=False)
    del huge
    gc.collect()

    assert kept() is None
    assert recorder.cumulative().nonfinite_outputs == 1


def test_small_outputs_are_kept_for_at_most_one_batch() -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    first = np.array([[0.5, 0.5]], dtype=np.float32)
    kept = weakref.ref(first)
    recorder.record(latency_s=0.001, inputs=None, outputs={"p": first}, error=False)
    del first

    for _ in range(PENDING_REQUESTS - 1):
        recorder.record(latency_s=0.001, inputs=None, outputs={"p": np.ones((1, 2))}, error=False)
    gc.collect()

    assert kept() is None
    assert recorder.cumulative().requests == PENDING_REQUESTS


def test_inputs_reused_by_the_caller_after_record_do_not_change_drift(
    tabular_reference: ReferenceProfile,
) -> None:
    recorder = StatsRecorder(reference=tabular_reference, now_s=0.0)
    reused = np.zeros((1, 4), dtype=np.float32)
    for _ in range(60):
        reused[:] = 0.0
        recorder.record(latency_s=0.001, inputs={"x": reused}, outputs=None, error=False)
        reused[:] = 100.0  # the caller's next request, before statistics measured this one

    unchanged = StatsRecorder(reference=tabular_reference, now_s=0.0)
    for _ in range(60):
        zeros = {"x": np.zeros((1, 4), dtype=np.float32)}
        unchanged.record(latency_s=0.001, inputs=zeros, outputs=None, error=False)

    assert recorder.cumulative().drift_psi == unchanged.cumulative().drift_psi


def test_concurrent_nan_requests_are_each_counted_once() -> None:
    threads_n, per_thread = 6, 2000
    recorder = StatsRecorder(reference=None, window_s=0.5, now_s=0.0)
    good = np.array([[0.2, 0.8]], dtype=np.float32)
    bad = np.array([[np.nan, 0.8]], dtype=np.float32)
    start = threading.Barrier(threads_n + 1)
    windows = []

    def serve() -> None:
        start.wait()
        for i in range(per_thread):
            outputs = {"p": bad if i % 7 == 0 else good}
            recorder.record(latency_s=0.001, inputs=None, outputs=outputs, error=False)

    workers = [threading.Thread(target=serve) for _ in range(threads_n)]
    windows.extend(roll_while_recording(recorder, workers, start))

    bad_per_thread = len(range(0, per_thread, 7))
    assert sum(w.nonfinite_outputs for w in windows) == threads_n * bad_per_thread
    assert sum(w.requests for w in windows) == threads_n * per_thread
    assert recorder.cumulative().classified_rows == threads_n * (per_thread - bad_per_thread)
