"""The in-process API: checks against the signature, per-version statistics, warm-up."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.errors import (
    InferenceFailedError,
    InferenceRequestError,
    InputDatatypeError,
    InputNameError,
    InputShapeError,
    ModelLoadError,
    ModelNotReadyError,
)
from agent.serving.server import ModelServer
from agent.stats.recorder import StatsRecorder
from tests.agent.serving.conftest import Models, RecordingObserver

X = np.arange(8, dtype=np.float32).reshape(2, 4)


@pytest.fixture
def server(models: Models) -> ModelServer:
    server = ModelServer("affine")
    server.swap(server.load(models.affine_one, "onnx", version="1"))
    return server


def test_infer_before_any_version_serves_is_not_ready() -> None:
    server = ModelServer("affine")
    assert not server.ready
    assert server.current is None
    with pytest.raises(ModelNotReadyError, match="no version serving"):
        server.infer({"x": X})


@pytest.mark.parametrize(
    ("inputs", "error", "words"),
    [
        ({"y": X}, InputNameError, r"the inputs are \['y'\], model 'affine' takes \['x'\]"),
        ({"x": X, "y": X}, InputNameError, r"\['x', 'y'\]"),
        ({}, InputNameError, r"the inputs are \[\]"),
        ({"x": X.astype(np.float64)}, InputDatatypeError, "is FP64, model 'affine' takes FP32"),
        ({"x": X.tolist()}, InputDatatypeError, "not a numpy array"),
        ({"x": None}, InputDatatypeError, "NoneType"),
        (
            {"x": X.reshape(4, 2)},
            InputShapeError,
            r"shape \[4, 2\], model 'affine' takes \[-1, 4\]",
        ),
        ({"x": X.reshape(1, 2, 4)}, InputShapeError, r"\[1, 2, 4\]"),
    ],
)
def test_inputs_that_do_not_fit_the_signature_are_refused(
    server: ModelServer, inputs: dict[str, object], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        server.infer(inputs)  # type: ignore[arg-type]


def test_each_version_records_its_own_requests(models: Models, server: ModelServer) -> None:
    first, second = RecordingObserver(), RecordingObserver()
    server.swap(server.load(models.affine_zero, "onnx", version="a", observer=first))
    server.infer({"x": X})
    server.swap(server.load(models.affine_one, "onnx", version="b", observer=second))
    outputs = server.infer({"x": X})

    assert [call["error"] for call in first.calls] == [False]
    assert len(second.calls) == 1  # warm-up runs are not requests
    call = second.calls[0]
    assert call["error"] is False
    assert call["latency_s"] > 0
    assert call["inputs"]["x"] is not None
    assert call["outputs"] is outputs
    assert np.array_equal(outputs["y"], X + 1)


@pytest.mark.parametrize(
    "inputs",
    [
        {"y": X},
        {"x": X, "y": X},
        {"x": X.astype(np.float64)},
        {"x": X.tolist()},
        {"x": X.reshape(4, 2)},
    ],
    ids=["unknown_name", "extra_input", "datatype", "not_an_array", "shape"],
)
def test_client_mistakes_are_refused_but_never_count_against_the_model(
    models: Models, inputs: dict[str, object]
) -> None:
    recorder = StatsRecorder(reference=None, now_s=0.0)
    server = ModelServer("affine")
    server.swap(server.load(models.affine_one, "onnx", version="1", observer=recorder))
    for _ in range(50):
        with pytest.raises(InferenceRequestError):
            server.infer(inputs)  # type: ignore[arg-type]
    server.infer({"x": X})

    stats = recorder.cumulative()
    assert (stats.requests, stats.errors) == (1, 0)


def test_a_failing_observer_never_fails_the_request(models: Models) -> None:
    class Broken:
        def record(self, **_: object) -> None:
            raise RuntimeError("statistics bug")

    server = ModelServer("affine")
    server.swap(server.load(models.affine_one, "onnx", version="1", observer=Broken()))
    assert np.array_equal(server.infer({"x": X})["y"], X + 1)


def test_runtime_failure_is_an_inference_failure_recorded_as_an_error(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # Gather from 4 values: index 0 (the warm-up's zero) works, index 10 fails inside ORT.
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"])],
        "gather",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.arange(4, dtype=np.float32), "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "gather.onnx")
    observer = RecordingObserver()
    server = ModelServer("gather")
    server.swap(server.load(tmp_path / "gather.onnx", "onnx", version="1", observer=observer))
    with pytest.raises(InferenceFailedError, match="onnxruntime failed to run"):
        server.infer({"i": np.array([10], np.int64)})
    assert np.array_equal(server.infer({"i": np.array([3], np.int64)})["y"], [3.0])
    assert [call["error"] for call in observer.calls] == [True, False]


def test_a_model_that_does_not_load_never_serves(tmp_path: Path, server: ModelServer) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    serving = server.current
    with pytest.raises(ModelLoadError, match=r"broken\.onnx"):
        server.load(broken, "onnx", version="2")
    assert server.current is serving


def test_load_warms_up_before_returning(models: Models) -> None:
    loaded = ModelServer("tiny").load(models.tflite, "tflite", version="1")
    assert 0 < loaded.warm_latency_s < float("inf")
    assert loaded.runtime.startswith("litert")
    assert loaded.signature.inputs[0].shape == (-1, 64)


def test_a_version_of_another_model_cannot_be_swapped_in(
    models: Models, server: ModelServer
) -> None:
    other = ModelServer("other").load(models.affine_zero, "onnx", version="1")
    with pytest.raises(ValueError, match="other"):
        server.swap(other)


def test_infer_async_runs_in_a_worker_thread(server: ModelServer) -> None:
    outputs = asyncio.run(server.infer_async({"x": X}))
    assert np.array_equal(outputs["y"], X + 1)


def test_litert_gives_each_concurrent_caller_its_own_answer(models: Models) -> None:
    """The interpreter is shared and not thread-safe: the lock keeps calls apart."""
    server = ModelServer("tiny")
    server.swap(server.load(models.tflite, "tflite", version="1"))
    rng = np.random.default_rng(3)
    cases = [rng.standard_normal((1 + i % 3, 64)).astype(np.float32) for i in range(8)]
    expected = [server.infer({"input": x})["probabilities"] for x in cases]
    wrong: list[int] = []

    def hammer(offset: int) -> None:
        for turn in range(100):
            index = (offset + turn) % len(cases)
            got = server.infer({"input": cases[index]})["probabilities"]
            if not np.array_equal(got, expected[index]):
                wrong.append(index)

    threads = [threading.Thread(target=hammer, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
