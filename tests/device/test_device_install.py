"""What a device with numpy < 2 and tflite-runtime runs: serve, check, swap; nothing more.

Each test uses the installed ``edgefleet[agent]`` (not the source tree) on TFLite models
through ``tflite_runtime``, the fallback the agent takes when ``ai_edge_litert`` is
missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

import agent
from agent.serving.server import ModelServer
from agent.update.sandbox import SandboxLimits, check_model
from protocol import Artifact, CheckBundleRef, Release, RuntimeRequirements, TensorSpec
from tensors import load_backend

SERVER_PACKAGES = ["fastapi", "starlette", "sqlalchemy", "sqlmodel", "amqtt", "uvicorn", "alembic"]


def test_no_server_package_is_installed() -> None:
    importable = [name for name in SERVER_PACKAGES if importlib.util.find_spec(name)]
    assert importable == []


def test_the_agent_runs_from_the_installed_package_with_numpy_1_and_tflite_runtime() -> None:
    assert "site-packages" in Path(agent.__file__).parts
    assert np.__version__.startswith("1.")
    assert importlib.util.find_spec("ai_edge_litert") is None
    assert importlib.util.find_spec("tflite_runtime") is not None


def test_tflite_models_load_through_tflite_runtime(models_dir: Path) -> None:
    backend = load_backend(models_dir / "model.tflite", "tflite")
    assert backend.runtime.startswith("tflite_runtime")
    expected = np.load(models_dir / "expected.npz")
    [output] = backend.run({"input": expected["x"]}).values()
    np.testing.assert_allclose(output, expected["y"], rtol=1e-5, atol=1e-6)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_local_answers_over_http_and_stops_on_sigterm(models_dir: Path) -> None:
    port = free_port()
    command = shutil.which("edgefleet-agent", path=str(Path(sys.executable).parent))
    assert command is not None
    process = subprocess.Popen(
        [command, "serve-local", str(models_dir / "model.tflite"), "--name", "tiny"],
        env={**os.environ, "EDGEFLEET_AGENT_INFERENCE_PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve-local never became ready"
            time.sleep(0.2)
        expected = np.load(models_dir / "expected.npz")
        body = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 64],
                 "data": expected["x"].ravel().tolist()}
            ]
        }  # fmt: skip
        response = httpx.post(f"{url}/v2/models/tiny/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        [output] = response.json()["outputs"]
        np.testing.assert_allclose(
            np.asarray(output["data"], np.float32).reshape(output["shape"]),
            expected["y"],
            rtol=1e-5,
            atol=1e-6,
        )
        meta = httpx.get(f"{url}/v2/models/tiny", timeout=5).json()
        assert meta["platform"] == "litert"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def release_of(model: Path, bundle: Path) -> Release:
    def ref(path: Path) -> tuple[str, int]:
        data = path.read_bytes()
        return hashlib.sha256(data).hexdigest(), len(data)

    sha, length = ref(model)
    bundle_sha, bundle_length = ref(bundle)
    return Release(
        model="tiny",
        version=1,
        artifact=Artifact(sha256=sha, length=length, format="tflite", filename=model.name),
        runtime=RuntimeRequirements(name="litert"),
        inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 64])],
        outputs=[TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 10])],
        check_bundle=CheckBundleRef(sha256=bundle_sha, length=bundle_length),
        created_at=datetime.now(UTC),
    )


def test_sandboxed_check_runs_the_golden_cases_of_the_check_bundle(models_dir: Path) -> None:
    model, bundle = models_dir / "model.tflite", models_dir / "bundle.npz"
    report = asyncio.run(
        check_model(
            model,
            release_of(model, bundle),
            check_bundle=bundle,
            latency_budget_ms=None,
            limits=SandboxLimits(memory_bytes=1 << 30, cpu_s=30, wall_s=60.0),
        )
    )
    assert report.golden_cases == 2
    assert report.runtime.startswith("tflite_runtime")


def test_hot_swap_under_load_fails_no_request(models_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model-v2.tflite"
    shutil.copyfile(models_dir / "model.tflite", copy)
    server = ModelServer("tiny")
    versions = [
        server.load(models_dir / "model.tflite", "tflite", version="1"),
        server.load(copy, "tflite", version="2"),
    ]
    server.swap(versions[0])
    x = np.load(models_dir / "expected.npz")["x"]
    stop, failures, answers = threading.Event(), [], [0]

    def client() -> None:
        while not stop.is_set():
            try:
                server.infer({"input": x})
                answers[0] += 1
            except Exception as exc:  # any failure is what this test looks for
                failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    swaps = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        server.swap(versions[(swaps + 1) % 2])
        swaps += 1
        time.sleep(0.002)
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []
    assert swaps > 50
    assert answers[0] > 0
