"""Budgeted sample capture on the device: what is kept, how much, for how long.

A real ``StatsRecorder`` gets requests as the serving layer hands them over; a real
``CaptureKeeper`` writes real files. Time is injected (a wall clock and a monotonic one).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.stats.capture import (
    HOUR_S,
    BadCapturePolicyError,
    CaptureKeeper,
    ModelCapture,
    request_confidence,
)
from agent.stats.recorder import StatsRecorder
from tensors.samples import read_sample

START = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
LOW = np.array([[0.34, 0.33, 0.33]], dtype=np.float32)
HIGH = np.array([[0.90, 0.05, 0.05]], dtype=np.float32)


class Clocks:
    def __init__(self) -> None:
        self.wall = START
        self.mono_s = 1000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono_s

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono_s += seconds


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def _keeper(directory: Path, clocks: Clocks) -> CaptureKeeper:
    return CaptureKeeper(directory, device_id="cam-1", clock=clocks, monotonic=clocks.monotonic)


def _policy(**changes: Any) -> dict[str, Any]:
    policy = {
        "model": "digits",
        "below_confidence": 0.5,
        "per_hour": 5,
        "max_bytes": 10 * 1024 * 1024,
        "until": (START + timedelta(days=1)).isoformat(),
    }
    return policy | changes


def _recorder(keeper: CaptureKeeper) -> StatsRecorder:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    recorder.capture = keeper.capture_for("digits", 3)
    return recorder


def _request(recorder: StatsRecorder, scores: np.ndarray, seed: int = 0) -> None:
    x = np.random.default_rng(seed).normal(size=(1, 4)).astype(np.float32)
    recorder.record(latency_s=0.001, inputs={"x": x}, outputs={"probs": scores}, error=False)


def test_capture_is_off_without_an_order(tmp_path: Path, clocks: Clocks) -> None:
    keeper = _keeper(tmp_path, clocks)
    recorder = _recorder(keeper)
    assert recorder.capture is None
    for seed in range(20):
        _request(recorder, LOW, seed)
    assert keeper.flush() == 0
    assert keeper.queued() == []


def test_only_low_confidence_inputs_are_kept(tmp_path: Path, clocks: Clocks) -> None:
    keeper = _keeper(tmp_path, clocks)
    keeper.order(_policy())
    recorder = _recorder(keeper)
    _request(recorder, HIGH, 1)
    _request(recorder, LOW, 2)
    _request(recorder, HIGH, 3)
    assert keeper.flush() == 1
    [queued] = keeper.queued()
    sample = read_sample(queued.path.read_bytes(), max_bytes=1 << 20)
    assert sample.meta.device_id == "cam-1"
    assert sample.meta.release_version == 3
    assert sample.meta.reason == "low_confidence"
    assert sample.meta.captured_at == START
    assert sample.meta.confidence == pytest.approx(0.34)
    expected = np.random.default_rng(2).normal(size=(1, 4)).astype(np.float32)
    np.testing.assert_array_equal(sample.inputs["x"], expected)
    np.testing.assert_array_equal(sample.outputs["probs"], LOW)


def test_flood_beyond_the_per_hour_budget_is_kept_to_the_budget(
    tmp_path: Path, clocks: Clocks
) -> None:
    keeper = _keeper(tmp_path, clocks)
    keeper.order(_policy(per_hour=5))
    recorder = _recorder(keeper)
    for seed in range(500):
        _request(recorder, LOW, seed)
    assert keeper.flush() == 5
    clocks.advance(HOUR_S / 2)
    for seed in range(500):
        _request(recorder, LOW, seed)
    assert keeper.flush() == 0  # the same hour: the budget is spent
    clocks.advance(HOUR_S / 2)
    for seed in range(500):
        _request(recorder, LOW, seed)
    assert keeper.flush() == 5
    assert len(keeper.queued()) == 10


def test_disk_budget_refuses_new_samples_and_keeps_the_oldest(
    tmp_path: Path, clocks: Clocks
) -> None:
    keeper = _keeper(tmp_path, clocks)
    keeper.order(_policy(per_hour=1000, max_bytes=40 * 1024))
    recorder = _recorder(keeper)
    for seed in range(100):
        _request(recorder, LOW, seed)
        clocks.advance(1.0)
        keeper.flush()
    queued = keeper.queued()
    assert 0 < len(queued) < 100
    assert sum(s.size_bytes for s in queued) <= 40 * 1024
    # The first ones kept are the ones left: new samples were refused, not old ones dropped.
    first = read_sample(queued[0].path.read_bytes(), max_bytes=1 << 20)
    assert first.meta.captured_at == START
    # Once uploaded (deleted), there is room again.
    for sample in queued:
        keeper.delete(sample)
    _request(recorder, LOW, 1000)
    assert keeper.flush() == 1


def test_policy_survives_a_restart_and_ends_at_its_until(tmp_path: Path, clocks: Clocks) -> None:
    keeper = _keeper(tmp_path, clocks)
    keeper.order(_policy(until=(START + timedelta(hours=2)).isoformat()))
    recorder = _recorder(keeper)
    _request(recorder, LOW)
    keeper.flush()
    restarted = _keeper(tmp_path, clocks)
    assert restarted.active("digits") is not None
    assert len(restarted.queued()) == 1
    clocks.advance(2 * 3600)
    assert restarted.capture_for("digits", 3) is None
    assert restarted.queued() == []  # samples of an ended capture never leave the device
    assert _keeper(tmp_path, clocks).policies == {}


def test_off_order_ends_capture_and_deletes_what_waits(tmp_path: Path, clocks: Clocks) -> None:
    keeper = _keeper(tmp_path, clocks)
    keeper.order(_policy())
    recorder = _recorder(keeper)
    _request(recorder, LOW)
    keeper.flush()
    details = keeper.order(_policy(off=True))
    assert details["capture"] is False
    assert keeper.capture_for("digits", 3) is None
    assert keeper.queued() == []


@pytest.mark.parametrize(
    "changes",
    [{"below_confidence": 0}, {"per_hour": 0}, {"max_bytes": 2**40}, {"until": "tomorrow"}],
)
def test_bad_capture_policy_is_refused(
    tmp_path: Path, clocks: Clocks, changes: dict[str, Any]
) -> None:
    keeper = _keeper(tmp_path, clocks)
    with pytest.raises(BadCapturePolicyError):
        keeper.order(_policy(**changes))
    assert keeper.policies == {}


@pytest.mark.parametrize(
    ("outputs", "classifier", "expected"),
    [
        ({"probs": LOW}, "probs", 0.34),
        ({"probs": np.concatenate([HIGH, LOW])}, "probs", 0.34),  # the lowest row
        ({"probs": LOW.reshape(1, 3, 1, 1)}, None, 0.34),  # an image classifier's shape
        ({"probs": np.array([[np.nan, 0.5, 0.5]])}, "probs", None),
        ({"logits": np.array([[3.0, -1.0, 7.0]])}, None, None),  # not probabilities
        ({"a": LOW, "b": LOW}, None, None),  # which one? not decided
    ],
)
def test_request_confidence(
    outputs: dict[str, np.ndarray], classifier: str | None, expected: float | None
) -> None:
    found = request_confidence(outputs, classifier)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert found[0] == next(iter(outputs))
        assert found[1] == pytest.approx(expected)


def test_samples_kept_before_a_new_release_are_still_written(
    tmp_path: Path, clocks: Clocks
) -> None:
    keeper = _keeper(tmp_path, clocks)
    keeper.order(_policy(per_hour=3))
    old = _recorder(keeper)
    _request(old, LOW, 1)
    new = StatsRecorder(reference=None, now_s=0.0)
    new.capture = keeper.capture_for("digits", 4)  # the update to release 4 serves now
    for seed in range(10):
        _request(new, LOW, seed)
    assert keeper.flush() == 3  # the hour's budget spans both releases
    versions = [
        read_sample(s.path.read_bytes(), max_bytes=1 << 20).meta.release_version
        for s in keeper.queued()
    ]
    assert sorted(versions) == [3, 4, 4]


def test_restart_does_not_start_a_new_hourly_budget(tmp_path: Path, clocks: Clocks) -> None:
    keeper = _keeper(tmp_path, clocks)
    keeper.order(_policy(per_hour=3))
    recorder = _recorder(keeper)
    for seed in range(10):
        _request(recorder, LOW, seed)
    assert keeper.flush() == 3
    clocks.advance(600)
    clocks.mono_s = 5.0  # a new process: another monotonic origin
    restarted = _keeper(tmp_path, clocks)
    recorder = _recorder(restarted)
    for seed in range(10):
        _request(recorder, LOW, seed)
    assert restarted.flush() == 0  # the crash loop gets no fresh budget
    clocks.advance(HOUR_S - 600)
    for seed in range(10):
        _request(recorder, LOW, seed)
    assert restarted.flush() == 3


def test_inputs_far_from_the_reference_are_kept_for_drift(
    tmp_path: Path, clocks: Clocks, tabular_reference: Any
) -> None:
    keeper = _keeper(tmp_path, clocks)
    keeper.order(_policy(model="digits", per_hour=100, rare_input_share=0.5))
    recorder = StatsRecorder(reference=tabular_reference, now_s=0.0)
    recorder.capture = keeper.capture_for("digits", 3)
    confident = {"probs": HIGH}
    rng = np.random.default_rng(5)
    for _ in range(20):  # like the reference: nothing kept
        x = rng.normal(size=(1, 4)).astype(np.float32)
        recorder.record(latency_s=0.001, inputs={"x": x}, outputs=confident, error=False)
    assert keeper.flush() == 0
    shifted = rng.normal(loc=8.0, size=(1, 4)).astype(np.float32)  # far in the tail
    recorder.record(latency_s=0.001, inputs={"x": shifted}, outputs=confident, error=False)
    assert keeper.flush() == 1
    [queued] = keeper.queued()
    sample = read_sample(queued.path.read_bytes(), max_bytes=1 << 20)
    assert sample.meta.reason == "input_drift"
    assert sample.meta.confidence == pytest.approx(0.9)


def test_drift_is_not_captured_unless_the_policy_asks(
    tmp_path: Path, clocks: Clocks, tabular_reference: Any
) -> None:
    keeper = _keeper(tmp_path, clocks)
    keeper.order(_policy(model="digits"))
    recorder = StatsRecorder(reference=tabular_reference, now_s=0.0)
    recorder.capture = keeper.capture_for("digits", 3)
    shifted = np.full((1, 4), 8.0, dtype=np.float32)
    recorder.record(latency_s=0.001, inputs={"x": shifted}, outputs={"probs": HIGH}, error=False)
    assert keeper.flush() == 0


class _BrokenCapture(ModelCapture):
    def has_budget(self) -> bool:
        raise RuntimeError("a bug in capture")


def test_a_failing_capture_never_fails_the_request(tmp_path: Path, clocks: Clocks) -> None:
    keeper = _keeper(tmp_path, clocks)
    keeper.order(_policy())
    policy = keeper.active("digits")
    assert policy is not None
    recorder = StatsRecorder(reference=None, now_s=0.0)
    recorder.capture = _BrokenCapture(policy, device_id="cam-1", release_version=3, clock=clocks)
    for seed in range(3):
        _request(recorder, LOW, seed)
    assert recorder.cumulative().requests == 3
