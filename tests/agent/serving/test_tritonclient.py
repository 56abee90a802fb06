"""``tritonclient.http``, the client most people use for this protocol, against the agent.

A real ``edgefleet-agent serve-local`` process serves SqueezeNet from the onnx package
(1x3x224x224 FP32 in, 1000 classes out) and the digits MLP; the client runs with its
defaults (binary tensor data both ways) and with JSON tensors, and every answer equals
bare ONNX Runtime's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from agent.backends import physical_cores
from tests.agent.serving.conftest import Models
from tests.model_factory import onnx_reference_models

URL_LINE = re.compile(r"serving http://(127\.0\.0\.1:\d+)/v2/models/(\S+)")
FRAME = "data_0"
CLASSES = "softmaxout_1"


def squeezenet() -> Path:
    return next(path for path in onnx_reference_models() if path.stem == "light_squeezenet")


def bare(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outputs: list[np.ndarray] = session.run(None, feeds)
    return outputs


@pytest.fixture(scope="module")
def served(models: Models) -> Iterator[dict[str, str]]:
    """serve-local processes for SqueezeNet and digits: model name -> host:port."""
    processes, urls = [], {}
    try:
        for model, name in ((squeezenet(), "vision"), (models.digits, "digits")):
            command = ["-m", "agent", "serve-local", str(model), "--port", "0", "--name", name]
            process = subprocess.Popen(
                [sys.executable, *command],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            processes.append(process)
            assert process.stdout is not None
            match = URL_LINE.search(process.stdout.readline())
            assert match, process.stderr.read() if process.stderr else ""
            urls[match[2]] = match[1]
        yield urls
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture
def frame() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)


def client_for(served: dict[str, str], name: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=served[name], network_timeout=60.0)


def test_health_and_metadata_read_as_triton_serves_them(served: dict[str, str]) -> None:
    client = client_for(served, "vision")
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("vision")
    assert client.get_server_metadata()["name"] == "edgefleet-agent"
    metadata = client.get_model_metadata("vision")
    assert metadata["inputs"] == [{"name": FRAME, "datatype": "FP32", "shape": [1, 3, 224, 224]}]
    assert metadata["outputs"][0]["name"] == CLASSES
    # "auto" threads, the default: the physical cores this process may use.
    assert metadata["parameters"] == {"intra_op_threads": physical_cores()}


def test_default_binary_infer_of_an_image_equals_bare_onnx_runtime(
    served: dict[str, str], frame: np.ndarray
) -> None:
    tensor = triton.InferInput(FRAME, list(frame.shape), "FP32")
    tensor.set_data_from_numpy(frame)  # binary_data=True: the client's default

    result = client_for(served, "vision").infer("vision", [tensor])

    [expected] = bare(squeezenet(), {FRAME: frame})
    assert np.array_equal(result.as_numpy(CLASSES), expected)
    response = result.get_response()
    assert response["outputs"][0]["parameters"]["binary_data_size"] == expected.nbytes


def test_json_tensors_and_json_outputs_equal_bare_onnx_runtime(
    served: dict[str, str], models: Models
) -> None:
    x = np.ascontiguousarray(models.digits_inputs[:3])
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    wanted = [triton.InferRequestedOutput("probabilities", binary_data=False)]

    result = client_for(served, "digits").infer("digits", [tensor], outputs=wanted)

    expected = bare(models.digits, {"input": x})
    outputs = {o["name"]: o for o in result.get_response()["outputs"]}
    assert list(outputs) == ["probabilities"]  # only what was asked for
    assert "data" in outputs["probabilities"]
    assert np.array_equal(result.as_numpy("probabilities"), expected[1])


def test_binary_input_with_a_json_output_and_a_binary_output(
    served: dict[str, str], models: Models
) -> None:
    x = np.ascontiguousarray(models.digits_inputs[:2])
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    wanted = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("probabilities"),
    ]

    result = client_for(served, "digits").infer("digits", [tensor], outputs=wanted)

    label, probabilities = bare(models.digits, {"input": x})
    assert np.array_equal(result.as_numpy("label"), label)
    assert np.array_equal(result.as_numpy("probabilities"), probabilities)


def test_errors_reach_the_client_with_their_status_and_message(
    served: dict[str, str], frame: np.ndarray
) -> None:
    client = client_for(served, "vision")
    tensor = triton.InferInput(FRAME, [1, 3, 224, 224], "FP32")
    tensor.set_data_from_numpy(frame)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [tensor])
    wrong = triton.InferInput(FRAME, [1, 3, 112, 112], "FP32")
    wrong.set_data_from_numpy(frame[:, :, :112, :112].copy())
    with pytest.raises(InferenceServerException) as raised:
        client.infer("vision", [wrong])
    assert raised.value.status() == "400"
    assert not client.is_model_ready("nope")
