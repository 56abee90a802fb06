"""The inference API on a Unix domain socket: a real serve-local process, real sockets.

The same protocol as over TCP, for applications on the device that want no port; the
socket is mode 0660, a socket left by a killed process does not stop the next start,
and a clean stop removes it.
"""

from __future__ import annotations

import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.agent.serving.conftest import Models, outputs_of, tensor_json

SOCKET_LINE = re.compile(r"serving unix:(\S+) ")


def serve_local(model: Path, socket: Path) -> list[str]:
    command = ["-m", "agent", "serve-local", str(model), "--port", "0", "--name", "digits"]
    return [sys.executable, *command, "--socket", str(socket)]


def start(model: Path, socket: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        serve_local(model, socket),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.readline()  # the TCP line
    line = process.stdout.readline()
    assert SOCKET_LINE.search(line), (line, process.poll())
    return process


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    # AF_UNIX paths are limited to 107 bytes: keep it short.
    path = tmp_path / "infer.sock"
    assert len(str(path)) < 100
    return path


def over_socket(path: Path) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://agent")


def test_the_api_answers_on_a_unix_socket_of_mode_0660(models: Models, socket_path: Path) -> None:
    process = start(models.digits, socket_path)
    try:
        assert stat.S_ISSOCK(socket_path.stat().st_mode)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660
        x = np.ascontiguousarray(models.digits_inputs[:2])
        with over_socket(socket_path) as client:
            assert client.get("/v2/health/ready").status_code == 200
            response = client.post(
                "/v2/models/digits/infer", json={"inputs": [tensor_json("input", x)]}
            )
        assert outputs_of(response)["probabilities"].shape == (2, 10)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert not socket_path.exists()  # a clean stop removes it


def test_a_socket_left_by_a_killed_agent_does_not_stop_the_next_start(
    models: Models, socket_path: Path
) -> None:
    killed = start(models.digits, socket_path)
    killed.kill()
    killed.wait(timeout=30)
    assert socket_path.is_socket()  # left behind

    process = start(models.digits, socket_path)
    try:
        with over_socket(socket_path) as client:
            assert client.get("/v2/models/digits/ready").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_a_file_that_is_not_a_socket_is_never_replaced(models: Models, socket_path: Path) -> None:
    socket_path.write_text("someone's data")
    process = subprocess.run(
        serve_local(models.digits, socket_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 3, process.stderr
    assert socket_path.read_text() == "someone's data"
