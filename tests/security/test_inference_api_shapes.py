"""Shapes numpy cannot make an array of are a 400 from the local inference API, not a 500.

Found in the security review: the local inference API answered 500 to a tensor of shape
``[0, 2**62, 2**62]``: it holds no value, so its data matched, and numpy raised
``ValueError`` ("array is too big") when the codec reshaped it. The codec now checks
every shape (at most 32 dimensions, and its non-zero dimensions must fit numpy's index
type) before numpy sees it, for JSON and binary tensors alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from simulator.demo_models import build_digits_model
from tests.security.inference_api import MODEL_NAME, LocalApi, serve_local

INFER = f"/v2/models/{MODEL_NAME}/infer"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    model, _ = build_digits_model(tmp_path_factory.mktemp("digits"))
    with serve_local(model) as running:
        yield running


@pytest.fixture
def client(api: LocalApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=30) as client:
        yield client


def json_tensor(shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}


def post_binary(client: httpx.Client, shape: list[int], data: bytes) -> httpx.Response:
    tensor = {"name": "input", "shape": shape, "datatype": "FP32"}
    tensor["parameters"] = {"binary_data_size": len(data)}
    header = json.dumps({"inputs": [tensor]}).encode()
    return client.post(
        INFER,
        content=header + data,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def test_shape_of_2_pow_62_gets_400_not_500(client: httpx.Client) -> None:
    response = client.post(INFER, json=json_tensor([0, 2**62, 2**62], []))
    assert response.status_code == 400, response.text
    assert "too large" in response.json()["error"]


@pytest.mark.parametrize(
    ("shape", "values"),
    [
        ([0, 2**62, 2**62], 0),
        ([2**62, 2**62], 0),  # its product overflows int64
        ([0, 2**61, 4], 0),  # 2**63 float32 bytes: one past numpy's index type
        ([1] * 70, 1),  # beyond numpy's 64 dimensions, with its one value
        ([0] * 40, 0),
    ],
)
def test_binary_and_json_shapes_numpy_cannot_make_get_400(
    client: httpx.Client, shape: list[int], values: int
) -> None:
    assert client.post(INFER, json=json_tensor(shape, [0.5] * values)).status_code == 400
    assert post_binary(client, shape, bytes(4 * values)).status_code == 400


def test_a_shape_larger_than_its_body_gets_400(client: httpx.Client) -> None:
    response = post_binary(client, [2**20, 64], bytes(64 * 4))
    assert response.status_code == 400, response.text
    assert "needs" in response.json()["error"]


def test_the_api_still_answers_a_well_formed_request(client: httpx.Client) -> None:
    response = client.post(INFER, json=json_tensor([1, 64], [0.0] * 64))
    assert response.status_code == 200, response.text


def test_an_empty_batch_gets_400_not_500(client: httpx.Client) -> None:
    response = client.post(INFER, json=json_tensor([0, 64], []))
    assert response.status_code == 400, response.text
    assert "no values" in response.json()["error"]
    assert post_binary(client, [0, 64], b"").status_code == 400
