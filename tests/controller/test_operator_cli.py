"""The new user's path, through the real CLI against a real server process.

Start the controller, create a token, push the digits model with its validation set,
get an INT8 variant with a report, release it, fetch the artifact, verify the release.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from simulator.controller_process import ControllerProcess
from simulator.demo_models import build_digits_model

STARTUP_TIMEOUT_S = 60.0


def edgefleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A running controller and the environment an operator would have."""
    controller = ControllerProcess(tmp_path / "controller")
    controller.start()
    try:
        token = controller.create_token("operator")
        yield controller.env | {"EDGEFLEET_URL": controller.url, "EDGEFLEET_TOKEN": token}
    finally:
        controller.stop()


def test_push_quantize_release_fetch(served: dict[str, str], tmp_path: Path) -> None:
    model, validation = build_digits_model(tmp_path)

    pushed = edgefleet(
        "model", "push", str(model), "--name", "digits", "--validation", str(validation),
        "--json", env=served,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["version"] == 1

    quantized = edgefleet(
        "model", "quantize", "digits:1", "--mode", "int8-dynamic", "--json", env=served
    )
    assert quantized.returncode == 0, quantized.stderr + quantized.stdout
    variant = json.loads(quantized.stdout)
    assert variant["status"] == "accepted"
    assert variant["report"]["size_ratio"] < 1

    table = edgefleet("model", "show", "digits", env={**served, "COLUMNS": "160"})
    assert table.returncode == 0
    assert "int8-dynamic" in table.stdout

    release_file = tmp_path / "release.json"
    released = edgefleet("model", "release", "digits:2", "--output", str(release_file), env=served)
    assert released.returncode == 0, released.stderr
    assert f"released digits:2 (sha256 {variant['sha256']})" in released.stdout

    trust_root = Path(served["EDGEFLEET_DATA_DIR"]) / "keys" / "trust-root.json"
    verified = edgefleet(
        "doc", "verify", "--trust-root", str(trust_root), str(release_file), env=served
    )
    assert verified.returncode == 0, verified.stdout
    assert "model digits version 2" in verified.stdout

    artifact = httpx.get(
        f"{served['EDGEFLEET_URL']}/artifacts/sha256/{variant['sha256']}",
        headers={"Authorization": f"Bearer {served['EDGEFLEET_TOKEN']}"},
    )
    assert hashlib.sha256(artifact.content).hexdigest() == variant["sha256"]


def test_cli_reports_refusals_and_missing_tokens(served: dict[str, str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 64)
    refused = edgefleet("model", "push", str(junk), "--name", "digits", env=served)
    assert refused.returncode == 1
    assert "error: 422" in refused.stderr

    anonymous = edgefleet("model", "list", env={**served, "EDGEFLEET_TOKEN": ""})
    assert anonymous.returncode == 1
    assert "401" in anonymous.stderr
