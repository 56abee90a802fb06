"""The shadow's comparison of outputs, its budget and its tap on a real ONNX Runtime model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.backends import load_backend
from agent.serving.server import ModelServer
from agent.shadow.compare import compare_outputs
from agent.shadow.runner import MAX_CREDIT_S, ShadowRunner
from protocol import ReleaseRef
from tensors import RuntimeOptions
from tests.agent.e2e.models import affine_model

SHA = "a" * 64


def test_identical_outputs_agree_and_have_no_distance() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    result = compare_outputs({"p": scores}, {"p": scores.copy()}, classifier="p")
    assert (result.compared_rows, result.agreed_rows, result.distance) == (2, 2, 0.0)
    assert result.confidence_sum == pytest.approx(1.7)
    assert result.serving_confidence_sum == pytest.approx(1.7)


def test_a_flipped_class_disagrees_and_a_nan_is_nonfinite() -> None:
    serving = {"p": np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)}
    flipped = {"p": np.array([[0.9, 0.1], [0.8, 0.2]], dtype=np.float32)}
    result = compare_outputs(serving, flipped, classifier="p")
    assert (result.compared_rows, result.agreed_rows) == (2, 1)
    assert result.distance == pytest.approx(1.6 / 2.0)
    nan = {"p": np.array([[np.nan, 0.1], [0.8, 0.2]], dtype=np.float32)}
    assert compare_outputs(serving, nan, classifier="p").nonfinite


def test_a_missing_reshaped_or_retyped_output_is_a_mismatch_not_a_comparison() -> None:
    serving = {"p": np.array([[0.1, 0.9]], dtype=np.float32)}
    eleven_classes = {"p": np.full((1, 3), 0.3, dtype=np.float32)}
    for shadow in ({}, {"q": serving["p"]}, eleven_classes, {"p": np.array([[0, 1]])}):
        result = compare_outputs(serving, shadow, classifier="p")
        assert result.mismatched
        assert (result.compared_rows, result.distance) == (0, 1.0)


def loaded(tmp_path: Path, bias: float, name: str) -> ModelServer:
    server = ModelServer("affine", options=RuntimeOptions(), load_backend=load_backend)
    version = server.load(affine_model(tmp_path / f"{name}.onnx", bias), "onnx", version=name)
    server.swap(version)
    return server


def test_the_shadow_sees_copies_of_requests_and_never_changes_an_answer(tmp_path: Path) -> None:
    serving = loaded(tmp_path, 1.0, "serving")
    candidate = ModelServer("affine", options=RuntimeOptions(), load_backend=load_backend)
    path = affine_model(tmp_path / "candidate.onnx", 2.0)
    runner = ShadowRunner(
        ReleaseRef(model="affine", version=2, sha256=SHA),
        lambda: candidate.load(path, "onnx", version="2"),
        max_cpu_fraction=1.0,
    )
    runner.start()
    current = serving.current
    assert current is not None
    current.tap(runner)
    x = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    answers = []
    # At least 200 requests, and on until the shadow ran one: its thread has the lowest
    # priority, so on a busy machine it may not run at all within the first 200.
    deadline = time.monotonic() + 30.0
    while len(answers) < 200 or (runner.busy_s == 0.0 and time.monotonic() < deadline):
        answers.append(serving.infer({"x": x}))
        time.sleep(0.001)
    runner.close()
    runner.join(10)
    window = runner.take_window()
    assert window is not None
    assert all(np.array_equal(a["y"], x + 1) for a in answers)
    assert window.samples + window.skipped == len(answers)
    assert window.samples > 0
    assert window.distance_sum / window.samples == pytest.approx(4 / 14, rel=1e-5)
    assert sum(window.cpu_counts) == window.samples
    assert sum(window.serving_cpu_counts) == 0  # no reference to compare CPU time with
    assert runner.take_window() is None  # every sample counted once


def test_the_budget_bounds_the_time_the_shadow_runs(tmp_path: Path) -> None:
    serving = loaded(tmp_path, 1.0, "serving")
    busy = {"s": 0.0}
    durations: list[float] = []

    class Slow:
        """A shadow that takes 20 ms per sample, to spend the budget fast."""

        name = "affine"

        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            started = time.perf_counter()
            time.sleep(0.02)
            durations.append(time.perf_counter() - started)
            busy["s"] += durations[-1]
            return {"y": inputs["x"] + 1}

    runner = ShadowRunner(
        ReleaseRef(model="affine", version=2, sha256=SHA),
        lambda: Slow(),  # type: ignore[arg-type,return-value]
        max_cpu_fraction=0.1,
    )
    runner.start()
    x = np.ones((1, 4), dtype=np.float32)
    started = time.perf_counter()
    stop = threading.Event()

    def offer() -> None:
        while not stop.is_set():
            runner.offer({"x": x}, serving.infer({"x": x}))

    threads = [threading.Thread(target=offer) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join()
    runner.close()
    runner.join(10)
    elapsed = time.perf_counter() - started
    window = runner.take_window()
    assert window is not None
    assert window.skipped > window.samples > 0
    # The invariant the budget keeps: shadow time <= fraction of elapsed + the saved credit,
    # plus the one sample that may be running when the credit runs out (on a loaded machine
    # a 20 ms sleep may take far longer: the slack is the longest sample, not a guess).
    assert busy["s"] <= 0.1 * elapsed + MAX_CREDIT_S + max(durations)
