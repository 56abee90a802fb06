"""No request fails, mixes two versions, or stalls because of a swap or a rollback.

Clients hammer one model while the main thread swaps between y = x + 0 and y = x + 1
(every swap back is a rollback). Every answer must be exactly one model's output for
the whole batch, and over HTTP the model the answer names. Latency bounds are relative to
a single inference measured in the same run: a request may wait for the GIL about one
switch interval per runnable thread, and anything far beyond that would be a stall.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from agent.serving.server import LoadedVersion, ModelServer
from tensors import TensorSpec
from tests.agent.serving.conftest import Array, Models, RunningApi, tensor_json

CLIENTS = 3
HAMMER_S = 2.0
SWAP_PAUSE_S = 0.002
STALL_FACTOR = 1000
X = np.arange(32, dtype=np.float32).reshape(8, 4)
EXPECTED = {"0": X, "1": X + 1}


def stall_bound_s(single_s: float) -> float:
    return STALL_FACTOR * single_s + 10 * sys.getswitchinterval() * (CLIENTS + 1)


def median_s(call: Callable[[], object], runs: int = 100) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def hammer_while_swapping(
    server: ModelServer, versions: list[LoadedVersion], request: Callable[[], str]
) -> tuple[Counter[str], list[str], list[float], int]:
    """Run ``request`` in CLIENTS threads for HAMMER_S while swapping; see what it says."""
    stop = threading.Event()
    served: Counter[str] = Counter()
    failures: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                outcome = request()
            except Exception as exc:
                outcome = f"failed: {exc!r}"
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if outcome in EXPECTED:
                    served[outcome] += 1
                else:
                    failures.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    swaps = 0
    deadline = time.monotonic() + HAMMER_S
    while time.monotonic() < deadline:
        server.swap(versions[(swaps + 1) % 2])
        swaps += 1
        stop.wait(SWAP_PAUSE_S)
    stop.set()
    for thread in threads:
        thread.join()
    return served, failures, latencies, swaps


def two_versions(models: Models) -> tuple[ModelServer, list[LoadedVersion]]:
    server = ModelServer("affine")
    versions = [
        server.load(models.affine_zero, "onnx", version="0"),
        server.load(models.affine_one, "onnx", version="1"),
    ]
    server.swap(versions[0])
    return server, versions


def which_model(y: Array) -> str:
    matches = [version for version, expected in EXPECTED.items() if np.array_equal(y, expected)]
    return matches[0] if len(matches) == 1 else f"mixed or wrong output: {y.tolist()}"


def test_in_process_requests_survive_swaps_and_rollbacks(models: Models) -> None:
    server, versions = two_versions(models)
    single_s = median_s(lambda: server.infer({"x": X}))

    served, failures, latencies, swaps = hammer_while_swapping(
        server, versions, lambda: which_model(server.infer({"x": X})["y"])
    )

    assert failures == []
    assert swaps > 100
    assert served["0"] > 0
    assert served["1"] > 0
    assert max(latencies) < stall_bound_s(single_s)


def test_http_requests_survive_swaps_and_rollbacks(models: Models, serve: Any) -> None:
    server, versions = two_versions(models)
    api: RunningApi = serve(server)
    body = {"inputs": [tensor_json("x", X)]}
    local = threading.local()

    def request() -> str:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=api.url, timeout=30)
        response = local.client.post("/v2/models/affine/infer", json=body)
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text}"
        answer = response.json()
        (output,) = answer["outputs"]
        y = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        said, computed = answer["model_version"], which_model(y)
        return computed if said == computed else f"says {said}, computed by {computed}"

    single_s = median_s(request)
    served, failures, latencies, swaps = hammer_while_swapping(server, versions, request)

    assert failures == []
    assert swaps > 100
    assert served["0"] > 0
    assert served["1"] > 0
    assert max(latencies) < stall_bound_s(single_s)


class GatedBackend:
    """y = x + bias, but ``run`` waits for ``release``: a request held in flight."""

    runtime = "gated"
    platform = "onnxruntime"
    inputs = (TensorSpec("x", "FP32", (-1, 4)),)
    outputs = (TensorSpec("y", "FP32", (-1, 4)),)

    def __init__(self, bias: float) -> None:
        self.bias = bias
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()  # the warm-up must not wait

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        self.started.set()
        assert self.release.wait(timeout=10)
        return {"y": feeds["x"] + np.float32(self.bias)}


def gated(name: str, version: str, bias: float) -> tuple[LoadedVersion, GatedBackend]:
    backend = GatedBackend(bias)
    loaded = LoadedVersion(
        name, version, path=Path("gated"), model_format="onnx", backend=backend, observer=None
    )
    loaded.warm_up()
    return loaded, backend


def test_a_request_in_flight_finishes_on_the_version_it_started_on() -> None:
    server = ModelServer("affine")
    old, old_backend = gated("affine", "0", 0.0)
    new, _ = gated("affine", "1", 1.0)
    server.swap(old)
    old_backend.started.clear()
    old_backend.release.clear()
    answers: list[Array] = []
    in_flight = threading.Thread(target=lambda: answers.append(server.infer({"x": X})["y"]))
    in_flight.start()
    assert old_backend.started.wait(timeout=10)

    assert server.swap(new) is old  # does not wait for the request in flight
    assert np.array_equal(server.infer({"x": X})["y"], X + 1)
    old_backend.release.set()
    in_flight.join(timeout=10)

    assert len(answers) == 1
    assert np.array_equal(answers[0], X)
