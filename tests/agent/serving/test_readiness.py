"""Readiness follows the serving version: 503 until one serves, 200 while, 503 after unload."""

from __future__ import annotations

from typing import Any

from agent.serving.server import ModelServer
from tests.agent.serving.conftest import Models, RunningApi

BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}


def statuses(api: RunningApi) -> dict[str, int]:
    client = api.client
    return {
        "live": client.get("/v2/health/live").status_code,
        "ready": client.get("/v2/health/ready").status_code,
        "model_ready": client.get("/v2/models/affine/ready").status_code,
        "metadata": client.get("/v2/models/affine").status_code,
        "infer": client.post("/v2/models/affine/infer", json=BODY).status_code,
    }


NOT_READY = {"live": 200, "ready": 503, "model_ready": 503, "metadata": 503, "infer": 503}
READY = {"live": 200, "ready": 200, "model_ready": 200, "metadata": 200, "infer": 200}


def test_ready_only_while_a_version_serves(models: Models, serve: Any) -> None:
    server = ModelServer("affine")
    api: RunningApi = serve(server)
    assert statuses(api) == NOT_READY
    assert api.client.post("/v2/models/affine/infer", json=BODY).json() == {
        "error": "model 'affine' has no version serving"
    }

    loaded = server.load(models.affine_one, "onnx", version="1")
    assert statuses(api) == NOT_READY  # loaded and warm, but not swapped in yet
    server.swap(loaded)
    assert statuses(api) == READY
    assert api.client.get("/v2/health/ready").json() == {"ready": True}

    assert server.unload() is loaded
    assert statuses(api) == NOT_READY


def test_server_is_ready_only_when_every_model_serves(models: Models, serve: Any) -> None:
    one, other = ModelServer("affine"), ModelServer("other")
    api: RunningApi = serve({"affine": one, "other": other})
    one.swap(one.load(models.affine_one, "onnx", version="1"))
    assert api.client.get("/v2/health/ready").status_code == 503
    assert api.client.get("/v2/models/affine/ready").status_code == 200
    other.swap(other.load(models.affine_zero, "onnx", version="1"))
    assert api.client.get("/v2/health/ready").status_code == 200


def test_server_metadata_and_liveness(serve: Any) -> None:
    api: RunningApi = serve({})
    assert api.client.get("/v2/health/live").json() == {"live": True}
    assert api.client.get("/v2").json()["name"] == "edgefleet-agent"
    assert api.client.get("/v2/health/ready").status_code == 503
