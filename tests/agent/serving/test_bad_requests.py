"""Every client mistake gets a clear 4xx with a JSON error that names what was wrong.

The model is y = x + 1 on x FP32 [-1, 4]; each row of the table is one mistake, the
status it must get, and words the message must contain.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.errors import InputDataError
from agent.serving.codec import decode_tensor
from tests.agent.serving.conftest import Models, RunningApi, loaded_server

GOOD: dict[str, Any] = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}


NESTED: Any = [1]
for _ in range(900):
    NESTED = [NESTED]


def tensor(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


BAD_BODIES: list[tuple[str, Any, int, str]] = [
    ("not_json", b"{inputs", 400, "not JSON"),
    ("not_utf8", b"\xff\xfe", 400, "not JSON"),
    ("not_an_object", [GOOD], 400, "JSON object"),
    ("no_inputs", {}, 400, "'inputs'"),
    ("empty_inputs", {"inputs": []}, 400, "'inputs'"),
    ("input_without_name", {"inputs": [{"shape": [1, 4]}]}, 400, "'name'"),
    ("unknown_input", {"inputs": [tensor(name="z")]}, 400, "['z']"),
    ("input_twice", {"inputs": [GOOD, GOOD]}, 400, "twice"),
    ("missing_input", {"inputs": [GOOD, tensor(name="extra")]}, 400, "['x']"),
    ("wrong_shape", {"inputs": [tensor(shape=[1, 5], data=[0] * 5)]}, 400, "[1, 5]"),
    ("wrong_rank", {"inputs": [tensor(shape=[4], data=[0] * 4)]}, 400, "[-1, 4]"),
    ("negative_dim", {"inputs": [tensor(shape=[-1, 4])]}, 400, "non-negative"),
    ("wrong_datatype", {"inputs": [tensor(datatype="FP64")]}, 400, "FP64"),
    ("unknown_datatype", {"inputs": [tensor(datatype="BYTES")]}, 400, "BYTES"),
    ("too_few_values", {"inputs": [tensor(data=[1, 2, 3])]}, 400, "3 values"),
    ("too_many_values", {"inputs": [tensor(data=[1] * 5)]}, 400, "5 values"),
    ("strings_as_data", {"inputs": [tensor(data=["a", "b", "c", "d"])]}, 400, "numbers"),
    ("data_not_a_list", {"inputs": [tensor(data=7)]}, 400, "'data'"),
    ("binary_data", {"inputs": [tensor(parameters={"binary_data_size": 16})]}, 400, "binary"),
    ("unknown_output", {"inputs": [GOOD], "outputs": [{"name": "z"}]}, 400, "['z']"),
    ("id_not_string", {"inputs": [GOOD], "id": 7}, 400, "'id'"),
    # Python's json raised RecursionError here (a 500); issue 16 found it.
    ("deeply_nested_json", b'{"inputs":' + b"[" * 1900 + b"]" * 1900 + b"}", 400, "depth"),
    ("deeply_nested_data", {"inputs": [tensor(data=NESTED)]}, 400, "regular list"),
    ("nan_literal", b'{"inputs":[{"name":"x","data":[NaN,1,2,3]}]}', 400, "not JSON"),
    ("number_beyond_fp64", b'{"inputs":[{"name":"x","data":[1e999,1,2,3]}]}', 400, "not JSON"),
]


@pytest.fixture
def api(models: Models, serve: Any) -> RunningApi:
    running: RunningApi = serve(loaded_server("affine", models.affine_one), max_body_bytes=4096)
    return running


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
def test_bad_infer_body_is_refused_with_a_clear_error(
    api: RunningApi, body: Any, status: int, words: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = api.client.post("/v2/models/affine/infer", content=content)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"]
    # The connection stays usable: a good request on it still works.
    good = api.client.post("/v2/models/affine/infer", json={"inputs": [GOOD]})
    assert good.json()["outputs"][0]["data"] == [2, 3, 4, 5]


@pytest.mark.parametrize(
    ("method", "path", "status", "words"),
    [
        ("POST", "/v2/models/nope/infer", 404, "unknown model 'nope'"),
        ("GET", "/v2/models/nope", 404, "unknown model"),
        ("GET", "/v2/models/affine/versions/9", 404, "version '9' is not serving"),
        ("POST", "/v2/models/affine/versions/9/infer", 404, "version '9'"),
        ("GET", "/v2/models/affine/explain", 404, "no route"),
        ("GET", "/v1/models/affine", 404, "no route"),
        ("GET", "/v2/models/affine/infer", 405, "POST"),
        ("POST", "/v2/health/ready", 405, "GET"),
    ],
)
def test_wrong_route_or_method_is_refused(
    api: RunningApi, method: str, path: str, status: int, words: str
) -> None:
    response = api.client.request(method, path, json={"inputs": [GOOD]})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_body_over_the_limit_is_refused_with_413_before_it_is_read(api: RunningApi) -> None:
    big = {"inputs": [tensor(shape=[1000, 4], data=[0.5] * 4000)]}
    response = api.client.post("/v2/models/affine/infer", json=big)
    assert response.status_code == 413
    assert "4096" in response.json()["error"]


def test_chunked_body_over_the_limit_is_refused_with_413(api: RunningApi) -> None:
    chunks = iter([b'{"inputs": [', b" " * 5000, b"]}"])
    response = api.client.post("/v2/models/affine/infer", content=chunks)
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("datatype", "data", "words"),
    [
        ("UINT8", [300], "out of its range"),
        ("INT8", [-129], "out of its range"),
        ("UINT16", [-1], "out of its range [0, 65535]"),
        ("INT64", [2**70], "out of its range"),  # numpy makes objects of it
        ("UINT64", [-1, 2**64 - 1], "out of its range"),  # numpy makes floats of these
        ("FP32", [1e300], "1e+300 is out of its range"),
        ("FP16", [1, 70000], "70000 is out of its range [-65504, 65504]"),
        ("FP16", [-70000.0], "-70000 is out of its range"),
        ("FP32", [2**200], "out of its range"),
        ("FP64", [10**400], "out of its range"),
        ("INT32", [1.5], "integers"),
        ("INT64", [True], "integers"),
        ("BOOL", [1], "true or false"),
        ("FP32", [True], "numbers"),
        ("FP32", [[1, 2], [3]], "regular list"),
    ],
)
def test_data_is_never_cast_silently(datatype: str, data: list[Any], words: str) -> None:
    with pytest.raises(InputDataError, match=re.escape(words)):
        decode_tensor("x", datatype, [len(data)], data)


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("UINT8", [0, 255], np.array([0, 255], dtype=np.uint8)),
        ("INT64", [-(2**63), 2**63 - 1], np.array([-(2**63), 2**63 - 1], dtype=np.int64)),
        ("BOOL", [True, False], np.array([True, False])),
        ("FP16", [1, 0.5], np.array([1, 0.5], dtype=np.float16)),
        ("FP16", [65504, -65504], np.array([65504, -65504], dtype=np.float16)),
        ("FP32", [2**70, 1e38], np.array([2**70, 1e38], dtype=np.float32)),
        ("UINT64", [0, 2**64 - 1], np.array([0, 2**64 - 1], dtype=np.uint64)),
        ("FP32", [[1, 2.5]], np.array([1, 2.5], dtype=np.float32)),
    ],
)
def test_data_of_every_kind_decodes_exactly(
    datatype: str, data: list[Any], expected: np.ndarray[Any, Any]
) -> None:
    decoded = decode_tensor("x", datatype, [2], data)
    assert decoded.dtype == expected.dtype
    assert np.array_equal(decoded, expected)


TYPED = {"FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "UINT8": TensorProto.UINT8}
TYPED |= {"INT8": TensorProto.INT8, "UINT32": TensorProto.UINT32}


def _identity_model(path: Path, elem_type: int) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, [1])],
        [helper.make_tensor_value_info("y", elem_type, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def identity_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("identity-models")
    return {
        datatype: _identity_model(directory / f"{datatype}.onnx", elem_type)
        for datatype, elem_type in TYPED.items()
    }


@pytest.fixture
def typed_api(identity_models: dict[str, Path], serve: Any) -> RunningApi:
    """One model per datatype, named after it: y = x, x of shape [1]."""
    servers = {dt: loaded_server(dt, path) for dt, path in identity_models.items()}
    running: RunningApi = serve(servers)
    return running


def _infer_one(api: RunningApi, datatype: str, value: Any) -> Any:
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": datatype, "data": [value]}]}
    return api.client.post(f"/v2/models/{datatype}/infer", json=body)


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("FP16", 70000),
        ("FP16", 1e300),
        ("FP32", 1e300),
        ("FP32", -1e39),
        ("UINT8", 300),
        ("UINT8", -1),
        ("INT8", 300),
        ("UINT32", -1),
    ],
)
def test_value_beyond_its_datatype_is_refused_not_cast(
    typed_api: RunningApi, datatype: str, value: Any
) -> None:
    """numpy would make 70000 an FP16 inf and 300 a UINT8 44; the model never sees either."""
    response = _infer_one(typed_api, datatype, value)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert f"input 'x' is {datatype}" in error
    assert "out of its range" in error


@pytest.mark.parametrize(
    ("datatype", "value"),
    [("FP16", 65504), ("FP16", -65504.0), ("FP32", 3.4e38), ("UINT8", 255), ("INT8", -128)],
)
def test_value_at_the_edge_of_its_datatype_is_served(
    typed_api: RunningApi, datatype: str, value: Any
) -> None:
    response = _infer_one(typed_api, datatype, value)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [pytest.approx(value, rel=1e-6)]
