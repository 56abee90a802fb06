"""Outputs through the agent equal the bare runtime's, bit for bit, on the same machine.

The bare runtime is configured as the agent configures it (one intra-op thread), so the
arithmetic is the same and the comparison is exact: FP32 goes through JSON as the
shortest decimal of its double, which reads back to the same float.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.agent.serving.conftest import (
    Models,
    RunningApi,
    loaded_server,
    outputs_of,
    tensor_json,
)
from tests.bare_runtimes import assert_same, bare_litert, bare_onnx


@pytest.mark.parametrize("batch", [1, 5])
def test_digits_outputs_over_http_equal_onnxruntime(
    models: Models, serve: object, batch: int
) -> None:
    x = np.ascontiguousarray(models.digits_inputs[:batch])
    running: RunningApi = serve(loaded_server("digits", models.digits))  # type: ignore[operator]
    response = running.client.post(
        "/v2/models/digits/infer", json={"id": "r-1", "inputs": [tensor_json("input", x)]}
    )
    assert response.json()["id"] == "r-1"
    assert_same(outputs_of(response), bare_onnx(models.digits, {"input": x}))


def test_small_cnn_outputs_over_http_equal_onnxruntime(models: Models, serve: object) -> None:
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    running: RunningApi = serve(loaded_server("cnn", models.cnn))  # type: ignore[operator]
    response = running.client.post(
        "/v2/models/cnn/infer", json={"inputs": [tensor_json("input", x)]}
    )
    assert_same(outputs_of(response), bare_onnx(models.cnn, {"input": x}))


@pytest.mark.parametrize("batch", [1, 2])
def test_tflite_outputs_over_http_equal_litert(models: Models, serve: object, batch: int) -> None:
    x = np.random.default_rng(2).standard_normal((batch, 64)).astype(np.float32)
    server = loaded_server("tiny", models.tflite, "tflite")
    running: RunningApi = serve(server)  # type: ignore[operator]
    response = running.client.post(
        "/v2/models/tiny/infer", json={"inputs": [tensor_json("input", x)]}
    )
    assert_same(outputs_of(response), {"probabilities": bare_litert(models.tflite, x)})
    metadata = running.client.get("/v2/models/tiny").json()
    assert metadata["platform"] == "litert"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]


def test_in_process_outputs_equal_onnxruntime(models: Models) -> None:
    x = np.ascontiguousarray(models.digits_inputs)
    server = loaded_server("digits", models.digits)
    assert_same(server.infer({"input": x}), bare_onnx(models.digits, {"input": x}))


def test_requested_outputs_only(models: Models, serve: object) -> None:
    x = np.ascontiguousarray(models.digits_inputs[:2])
    running: RunningApi = serve(loaded_server("digits", models.digits))  # type: ignore[operator]
    response = running.client.post(
        "/v2/models/digits/infer",
        json={"inputs": [tensor_json("input", x)], "outputs": [{"name": "label"}]},
    )
    outputs = outputs_of(response)
    assert list(outputs) == ["label"]
    assert np.array_equal(outputs["label"], bare_onnx(models.digits, {"input": x})["label"])


def test_metadata_describes_the_serving_version(models: Models, serve: object) -> None:
    running: RunningApi = serve(loaded_server("digits", models.digits, version="7"))  # type: ignore[operator]
    assert running.client.get("/v2/models/digits").json() == {
        "name": "digits",
        "versions": ["7"],
        "platform": "onnxruntime",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ],
        "parameters": {"intra_op_threads": 1},  # the server's RuntimeOptions
    }
    assert running.client.get("/v2/models/digits/versions/7").status_code == 200
