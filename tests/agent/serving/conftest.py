"""Real models, the serving stack on a background event loop, and a JSON tensor helper.

``serve`` starts an ``InferenceApi`` on a free loopback port in a thread of its own, so a
test talks to it with a plain (synchronous, keep-alive) httpx client while its main
thread swaps versions. Models are built once per session: nothing is downloaded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest

from agent.serving.http_api import InferenceApi
from agent.serving.server import ModelServer
from simulator.demo_models import build_digits_model
from tensors import reported_datatype
from tests.agent.e2e.models import affine_model
from tests.model_factory import small_cnn, tiny_tflite

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Models:
    digits: Path
    digits_inputs: Array
    cnn: Path
    tflite: Path
    affine_zero: Path
    affine_one: Path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    directory = tmp_path_factory.mktemp("serving-models")
    digits, npz = build_digits_model(directory)
    return Models(
        digits=digits,
        digits_inputs=np.load(npz)["input"][:5],
        cnn=small_cnn(directory),
        tflite=tiny_tflite(directory),
        affine_zero=affine_model(directory / "affine-0.onnx", 0.0),
        affine_one=affine_model(directory / "affine-1.onnx", 1.0),
    )


class RecordingObserver:
    """Keeps every ``record`` call; thread-safe."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(
        self,
        *,
        latency_s: float,
        inputs: Mapping[str, Array] | None,
        outputs: Mapping[str, Array] | None,
        error: bool,
    ) -> None:
        with self._lock:
            self.calls.append(
                {"latency_s": latency_s, "inputs": inputs, "outputs": outputs, "error": error}
            )


@dataclass
class RunningApi:
    api: InferenceApi
    port: int
    client: httpx.Client

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningApi]]:
    """Start ``InferenceApi(servers, port=0, **options)`` on a loop of its own thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-api-loop", daemon=True)
    thread.start()
    running: list[RunningApi] = []

    def start(servers: Any, **options: Any) -> RunningApi:
        api = InferenceApi(servers, port=0, **options)
        port = asyncio.run_coroutine_threadsafe(api.start(), loop).result(timeout=10)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        running.append(RunningApi(api, port, client))
        return running[-1]

    yield start
    for item in running:
        item.client.close()
        asyncio.run_coroutine_threadsafe(item.api.stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def loaded_server(name: str, path: Path, fmt: str = "onnx", *, version: str = "1") -> ModelServer:
    server = ModelServer(name)
    server.swap(server.load(path, fmt, version=version))  # type: ignore[arg-type]
    return server


def tensor_json(name: str, array: Array) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": reported_datatype(array.dtype),
        "data": array.ravel().tolist(),
    }


def outputs_of(response: httpx.Response) -> dict[str, Array]:
    """The response's output tensors as numpy arrays of their datatype and shape."""
    assert response.status_code == 200, response.text
    arrays = {}
    for tensor in response.json()["outputs"]:
        dtype = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64}[tensor["datatype"]]
        arrays[tensor["name"]] = np.asarray(tensor["data"], dtype=dtype).reshape(tensor["shape"])
    return arrays
