"""``edgefleet-agent serve-local`` as a real process: serve, answer, stop on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.agent.serving.conftest import Models, outputs_of, tensor_json

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
URL_LINE = re.compile(r"serving (http://127\.0\.0\.1:\d+)/v2/models/(\S+)")


def serve_local(model: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "serve-local", str(model), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def stop_at_exit() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serves_a_model_file_and_stops_cleanly_on_sigterm(
    models: Models, stop_at_exit: list[subprocess.Popen[str]]
) -> None:
    process = serve_local(models.digits, "--name", "digits-local")
    stop_at_exit.append(process)
    assert process.stdout is not None
    assert process.stderr is not None
    line = process.stdout.readline()  # printed once the API listens
    match = URL_LINE.search(line)
    assert match, (line, process.stderr.read() if process.poll() is not None else "")
    base_url, name = match.groups()
    assert name == "digits-local"

    x = np.ascontiguousarray(models.digits_inputs[:2])
    with httpx.Client(base_url=base_url, timeout=10) as client:
        assert client.get("/v2/health/ready").status_code == 200
        response = client.post(
            "/v2/models/digits-local/infer", json={"inputs": [tensor_json("input", x)]}
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(models.digits), options, providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"input": x})
    outputs = outputs_of(response)
    assert np.array_equal(outputs["label"], label)
    assert np.array_equal(outputs["probabilities"], probabilities)

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=STOP_TIMEOUT_S) == 0


def test_exits_3_when_the_model_does_not_load(
    tmp_path: Path, stop_at_exit: list[subprocess.Popen[str]]
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07not a model")
    process = serve_local(broken)
    stop_at_exit.append(process)
    _, stderr = process.communicate(timeout=STARTUP_TIMEOUT_S)
    assert process.returncode == 3
    assert "the model does not load" in stderr


def test_the_command_line_loads_no_update_or_broker_code_until_a_command_needs_it() -> None:
    # serve-local on a small device holds only the serving path in memory (docs/agent.md).
    probe = (
        "import sys, agent.cli, agent.serving.serve_local; "
        "print(' '.join(m for m in sys.modules "
        "if m.startswith(('agent.link', 'agent.update', 'agent.daemon', 'httpx', 'paho'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == []
