"""The pure OIP codec: bodies in, arrays or a typed refusal out; arrays in, bodies out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.errors import (
    InferenceError,
    InferenceFailedError,
    InputDatatypeError,
    InputNameError,
    MalformedRequestError,
    ModelNotReadyError,
    RequestTooLargeError,
    UnknownModelError,
)
from agent.serving.codec import (
    decode_infer_request,
    encode_infer_response,
    encode_model_metadata,
    error_reply,
    status_of,
)
from tensors import TensorSpec


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownModelError("m"), 404),
        (ModelNotReadyError("m"), 503),
        (RequestTooLargeError("m"), 413),
        (InputNameError("m"), 400),
        (MalformedRequestError("m"), 400),
        (InferenceFailedError("m"), 500),
        (InferenceError("m"), 500),
    ],
)
def test_every_inference_error_has_one_status(error: InferenceError, status: int) -> None:
    assert status_of(error) == status
    assert json.loads(error_reply(status, str(error)).body) == {"error": "m"}


def test_a_request_decodes_to_arrays_of_its_datatypes() -> None:
    body = json.dumps(
        {
            "id": "r-7",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [0.5, 1]},
                {"name": "k", "datatype": "INT64", "shape": [2], "data": [1, 2]},
            ],
            "outputs": [{"name": "y"}],
        }
    ).encode()
    feeds, requested, request_id = decode_infer_request(body)
    assert (feeds["x"].dtype, feeds["x"].shape) == (np.float32, (1, 2))
    assert feeds["k"].dtype == np.int64
    assert (requested, request_id) == (["y"], "r-7")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", MalformedRequestError),
        (b'{"inputs": []}', MalformedRequestError),
        (b'{"inputs": [{"name": "x", "datatype": "BF16", "shape": [1], "data": [1]}]}',
         InputDatatypeError),
    ],
)  # fmt: skip
def test_a_request_that_does_not_fit_is_refused(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_infer_request(body)


def test_a_response_round_trips_fp32_exactly() -> None:
    y = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    document = json.loads(encode_infer_response("m", "3", {"y": y}, None, "r-1"))
    (output,) = document["outputs"]
    assert (document["model_version"], document["id"]) == ("3", "r-1")
    assert (output["datatype"], output["shape"]) == ("FP32", [2, 3])
    assert np.array_equal(np.asarray(output["data"], dtype=np.float32).reshape(2, 3), y)


def test_metadata_names_the_signature() -> None:
    spec = TensorSpec("x", "FP32", (-1, 4))
    document = json.loads(encode_model_metadata("m", "3", "onnxruntime", [spec], [spec]))
    assert document["versions"] == ["3"]
    assert document["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
