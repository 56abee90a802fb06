"""The pure OIP codec: bodies in, arrays or a typed refusal out; arrays in, bodies out."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from agent.errors import (
    InferenceError,
    InferenceFailedError,
    InputDataError,
    InputDatatypeError,
    InputNameError,
    MalformedRequestError,
    ModelNotReadyError,
    RequestTooLargeError,
    UnknownModelError,
)
from agent.serving.codec import (
    InferRequest,
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
    feeds, requested, request_id, binary, _ = decode_infer_request(body)
    assert binary is False
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
    request = InferRequest({}, None, "r-1", False, {})
    document = json.loads(encode_infer_response("m", "3", {"y": y}, request).body)
    (output,) = document["outputs"]
    assert (document["model_version"], document["id"]) == ("3", "r-1")
    assert (output["datatype"], output["shape"]) == ("FP32", [2, 3])
    assert np.array_equal(np.asarray(output["data"], dtype=np.float32).reshape(2, 3), y)


def test_metadata_names_the_signature() -> None:
    spec = TensorSpec("x", "FP32", (-1, 4))
    document = json.loads(encode_model_metadata("m", "3", "onnxruntime", [spec], [spec]))
    assert document["versions"] == ["3"]
    assert document["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]


# The binary tensor data extension (Triton, KServe) -------------------------------------

BINARY_DATATYPES = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}


def binary_request(
    inputs: dict[str, tuple[str, np.ndarray]], **document: object
) -> tuple[bytes, int]:
    """A request with every input as binary data; returns the body and its JSON length."""
    tensors = [
        {
            "name": name,
            "datatype": datatype,
            "shape": list(array.shape),
            "parameters": {"binary_data_size": array.nbytes},
        }
        for name, (datatype, array) in inputs.items()
    ]
    header = json.dumps({"inputs": tensors, **document}).encode()
    return header + b"".join(
        a.astype(a.dtype.newbyteorder("<")).tobytes() for _, a in inputs.values()
    ), len(header)


@pytest.mark.parametrize("datatype", BINARY_DATATYPES)
def test_binary_inputs_decode_exactly_for_every_datatype(datatype: str) -> None:
    values = np.arange(-3, 3).reshape(2, 3) % 2 if datatype == "BOOL" else np.arange(6) % 5
    array = np.asarray(values, dtype=BINARY_DATATYPES[datatype]).reshape(2, 3)
    body, json_length = binary_request({"x": (datatype, array)})

    request = decode_infer_request(body, json_length)

    assert request.inputs["x"].dtype == array.dtype
    assert np.array_equal(request.inputs["x"], array)


def test_json_and_binary_inputs_mix_in_one_request() -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    body, json_length = binary_request({"x": ("FP32", x)})
    document = json.loads(body[:json_length])
    document["inputs"].append({"name": "k", "datatype": "INT64", "shape": [2], "data": [7, 8]})
    header = json.dumps(document).encode()

    request = decode_infer_request(header + body[json_length:], len(header))

    assert np.array_equal(request.inputs["x"], x)
    assert request.inputs["k"].tolist() == [7, 8]


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda b, n: (b[:-1], n), InputDataError, "short"),
        (lambda b, n: (b + b"\0", n), MalformedRequestError, "follow the last"),
        (lambda b, n: (b, len(b) + 1), MalformedRequestError, "does not fit"),
        (lambda b, n: (b, 0), MalformedRequestError, "does not fit"),
        (lambda b, n: (b, None), MalformedRequestError, "not JSON"),
    ],
    ids=["body_short", "bytes_left_over", "header_past_the_end", "header_empty", "no_header"],
)
def test_binary_data_that_does_not_add_up_is_refused(
    mutate: Any, error: type[Exception], match: str
) -> None:
    body, json_length = binary_request({"x": ("FP32", np.zeros((1, 4), np.float32))})
    with pytest.raises(error, match=match):
        decode_infer_request(*mutate(body, json_length))


def test_binary_size_that_does_not_match_the_shape_is_refused() -> None:
    x = np.zeros((1, 4), np.float32)
    body, json_length = binary_request({"x": ("FP32", x)})
    document = json.loads(body[:json_length])
    document["inputs"][0]["shape"] = [1, 5]
    header = json.dumps(document).encode()
    with pytest.raises(InputDataError, match="needs 20"):
        decode_infer_request(header + body[json_length:], len(header))


def test_binary_bool_bytes_other_than_0_and_1_are_refused() -> None:
    body, json_length = binary_request({"b": ("BOOL", np.ones(2, np.uint8))})
    body = body[:-1] + b"\x02"
    with pytest.raises(InputDataError, match="0 or 1"):
        decode_infer_request(body, json_length)


def test_outputs_go_binary_where_the_request_asks() -> None:
    y = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    k = np.array([1, 2], np.int64)
    # All binary by default, but k asks for JSON.
    request = InferRequest({}, ["y", "k"], None, True, {"k": False})

    reply = encode_infer_response("m", "1", {"y": y, "k": k}, request)

    assert reply.json_length is not None
    document = json.loads(reply.body[: reply.json_length])
    out_y, out_k = document["outputs"]
    assert out_y["parameters"] == {"binary_data_size": y.nbytes}
    assert "data" not in out_y
    assert out_k["data"] == [1, 2]
    binary = np.frombuffer(reply.body[reply.json_length :], dtype="<f4").reshape(2, 3)
    assert np.array_equal(binary, y)


def test_a_request_without_binary_outputs_gets_plain_json() -> None:
    reply = encode_infer_response(
        "m", "1", {"y": np.zeros(2, np.float32)}, InferRequest({}, None, None, False, {})
    )
    assert reply.json_length is None
    assert json.loads(reply.body)["outputs"][0]["data"] == [0.0, 0.0]


def test_binary_output_flags_must_be_booleans() -> None:
    body = json.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
            "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}],
        }
    ).encode()
    with pytest.raises(MalformedRequestError, match="binary_data"):
        decode_infer_request(body)
