"""Both backends load and run real models exactly as the bare runtimes do, and fail typed.

The bare runtimes are configured as the backends configure them (one intra-op thread),
so the arithmetic is the same and the comparison is exact.
"""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from ai_edge_litert.interpreter import Interpreter

from tensors import (
    InvalidOptionsError,
    LiteRtBackend,
    ModelRefusedError,
    OnnxBackend,
    RunFailedError,
    RuntimeMissingError,
    RuntimeOptions,
    TensorSpec,
    TensorTooLargeError,
    load_backend,
)
from tests.bare_runtimes import assert_same, bare_litert, bare_onnx
from tests.tensors.conftest import Models


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_backend_runs_the_digits_mlp_as_onnxruntime_does(models: Models, batch: int) -> None:
    backend = OnnxBackend(models.digits)
    x = np.ascontiguousarray(models.digits_inputs[:batch])
    assert_same(backend.run({"input": x}), bare_onnx(models.digits, {"input": x}))


def test_onnx_backend_reports_the_digits_signature(models: Models) -> None:
    backend = OnnxBackend(models.digits)
    assert backend.platform == "onnxruntime"
    assert backend.runtime == f"onnxruntime {ort.__version__}"
    assert backend.inputs == (TensorSpec("input", "FP32", (-1, 64)),)
    assert [(s.name, s.datatype) for s in backend.outputs] == [
        ("label", "INT64"),
        ("probabilities", "FP32"),
    ]


def test_onnx_backend_runs_squeezenet_as_onnxruntime_does(models: Models) -> None:
    backend = OnnxBackend(models.squeezenet)
    (spec,) = backend.inputs
    assert (spec.datatype, spec.shape) == ("FP32", (1, 3, 224, 224))
    x = np.random.default_rng(3).standard_normal(spec.shape).astype(np.float32)
    assert_same(backend.run({spec.name: x}), bare_onnx(models.squeezenet, {spec.name: x}))


def test_onnx_backend_without_graph_optimizations_runs_the_graph_as_written(
    models: Models,
) -> None:
    backend = OnnxBackend(models.digits, RuntimeOptions(graph_optimizations=False))
    x = np.ascontiguousarray(models.digits_inputs)
    assert_same(backend.run({"input": x}), bare_onnx(models.digits, {"input": x}, optimize=False))


@pytest.mark.parametrize("batch", [1, 3])
def test_litert_backend_runs_the_tiny_classifier_as_litert_does(models: Models, batch: int) -> None:
    backend = LiteRtBackend(models.tflite)
    x = np.random.default_rng(2).standard_normal((batch, 64)).astype(np.float32)
    assert_same(backend.run({"input": x}), {"probabilities": bare_litert(models.tflite, x)})
    assert backend.platform == "litert"
    assert [(s.name, s.datatype, s.shape) for s in backend.inputs] == [("input", "FP32", (-1, 64))]


def test_litert_backend_serves_many_threads_with_the_serial_outputs(models: Models) -> None:
    backend = LiteRtBackend(models.tflite)
    rng = np.random.default_rng(4)
    batches = [rng.standard_normal((n, 64)).astype(np.float32) for n in (1, 2, 3, 4)]
    expected = [backend.run({"input": x})["probabilities"] for x in batches]
    mismatches: list[int] = []

    def work(index: int) -> None:
        for _ in range(25):
            got = backend.run({"input": batches[index]})["probabilities"]
            if not np.array_equal(got, expected[index]):
                mismatches.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []


@pytest.mark.parametrize(
    ("model_format", "backend_type"), [("onnx", OnnxBackend), ("tflite", LiteRtBackend)]
)
def test_load_backend_picks_the_backend_by_format(
    models: Models, model_format: str, backend_type: type
) -> None:
    path = models.digits if model_format == "onnx" else models.tflite
    assert isinstance(load_backend(path, model_format), backend_type)  # type: ignore[arg-type]


def test_a_format_with_no_runtime_is_runtime_missing(models: Models) -> None:
    with pytest.raises(RuntimeMissingError, match="no runtime for the model format 'pt'"):
        load_backend(models.digits, "pt")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("junk.onnx", "onnxruntime cannot load junk.onnx"),
        ("junk.tflite", "LiteRT cannot load junk.tflite"),
    ],
)
def test_a_file_the_runtime_refuses_is_model_refused(
    tmp_path: Path, name: str, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelRefusedError, match=message):
        load_backend(path, "onnx" if name.endswith(".onnx") else "tflite")


def test_inputs_the_runtime_rejects_fail_the_run(models: Models) -> None:
    backend = OnnxBackend(models.digits)
    with pytest.raises(RunFailedError, match="onnxruntime failed to run the model"):
        backend.run({"input": np.zeros((2, 63), dtype=np.float32)})


def test_litert_refuses_a_declared_tensor_above_the_limit(models: Models) -> None:
    with pytest.raises(
        TensorTooLargeError, match=r"'w1' declares .*: 32768 bytes, above the limit of 1000"
    ):
        LiteRtBackend(models.tflite, max_tensor_bytes=1000)


def test_a_missing_onnxruntime_is_runtime_missing(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(RuntimeMissingError, match="needs onnxruntime, which is missing"):
        OnnxBackend(models.digits)


def test_a_missing_litert_is_runtime_missing(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    with pytest.raises(RuntimeMissingError, match="needs ai-edge-litert"):
        LiteRtBackend(models.tflite)


def test_litert_falls_back_to_tflite_runtime(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    fallback = types.ModuleType("tflite_runtime")
    fallback.__version__ = "2.14.0"  # type: ignore[attr-defined]
    interpreter_module = types.ModuleType("tflite_runtime.interpreter")
    interpreter_module.Interpreter = Interpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", fallback)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", interpreter_module)
    backend = LiteRtBackend(models.tflite)
    assert backend.runtime == "tflite_runtime 2.14.0"
    x = np.ones((1, 64), dtype=np.float32)
    assert_same(backend.run({"input": x}), {"probabilities": bare_litert(models.tflite, x)})


@pytest.mark.parametrize(
    "options",
    [
        {"providers": ()},
        {"intra_op_threads": -1},
        {"inter_op_threads": -1},
    ],
)
def test_options_no_runtime_could_honour_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(InvalidOptionsError):
        RuntimeOptions(**options)  # type: ignore[arg-type]
