"""Budgeted sample capture on a real agent: an operator turns capture on for a model,
the agent keeps its low-confidence inputs and uploads them with its device token, and
``edgefleet samples export`` writes a dataset that ``numpy.load`` reads back.

One agent process, the controller process and Mosquitto. Capture is ordered with the
CLI, reaches the device as a signed command over MQTT, and is kept to its budget.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from controller.cli.main import app as cli
from simulator.demo_models import build_digits_model

from .conftest import PROBATION, Fleet
from .test_drift_is_not_a_release_gate import digits_requests

pytestmark = pytest.mark.timeout(300)

PER_HOUR = 12
# Probation is not what this test is about: a short one, on the traffic already flowing.
QUICK_PROBATION = PROBATION | {"window_s": 1.0, "min_requests": 5}
WAIT_S = 90.0


def _cli(fleet: Fleet, *args: str) -> str:
    """``edgefleet …`` in this process (real HTTP to the controller process)."""
    env = {"EDGEFLEET_URL": fleet.controller.url, "EDGEFLEET_TOKEN": fleet.api_token}
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def _samples(fleet: Fleet) -> list[dict[str, Any]]:
    answer: list[dict[str, Any]] = fleet.api.call("GET", "/api/v1/samples?model=digits")
    return answer


def test_capture_turned_on_uploads_low_confidence_inputs_that_export_and_reload(
    fleet: Fleet, tmp_path: Path
) -> None:
    model, validation = build_digits_model(tmp_path / "models")
    fleet.enroll(1)
    [agent] = fleet.agents
    with (agent.directory / "agent.toml").open("a") as config:
        config.write("capture_upload_interval_s = 1.0\n")
    fleet.start_agents()
    # Inverted digits: a camera with another exposure; the model is unsure of many.
    traffic = agent.start_traffic("digits", bodies=digits_requests("inverted"), interval_s=0.02)
    version = fleet.api.push_and_release("digits", model, validation)
    fleet.roll_out(f"digits:{version}", waves="100%", soak="0s", probation=QUICK_PROBATION)

    time.sleep(1.0)  # traffic flows with capture off: nothing may leave the device
    assert _samples(fleet) == []

    ordered = _cli(
        fleet,
        "samples", "capture", "--model", "digits", "--below-confidence", "0.9",
        "--per-hour", str(PER_HOUR), "--max-bytes", "1MB", "--for", "1h",
    )  # fmt: skip
    assert agent.device_id in ordered
    status = fleet.api.call("GET", "/api/v1/capture?model=digits")
    assert [s["device_id"] for s in status] == [agent.device_id]

    deadline = time.monotonic() + WAIT_S
    while len(_samples(fleet)) < PER_HOUR:
        assert time.monotonic() < deadline, fleet.context()
        time.sleep(0.5)
    time.sleep(2.0)  # the flood goes on; the hour's budget holds
    samples = _samples(fleet)
    assert len(samples) == PER_HOUR
    assert {s["device_id"] for s in samples} == {agent.device_id}
    assert {s["release_version"] for s in samples} == {version}
    assert all(s["confidence"] < 0.9 for s in samples)
    assert traffic.failures == []

    listed = _cli(fleet, "samples", "list", "--model", "digits", "--since", "1d")
    assert f"{PER_HOUR} samples" in listed
    assert agent.device_id in _cli(fleet, "samples", "status", "--model", "digits")

    out = tmp_path / "retrain" / "digits.npz"
    exported = _cli(fleet, "samples", "export", "--model", "digits", "--since", "1d", str(out))
    assert f"{PER_HOUR} samples" in exported
    with np.load(out, allow_pickle=False) as dataset:
        assert dataset["input:input"].shape == (PER_HOUR, 64)
        assert dataset["input:input"].dtype == np.float32
        assert dataset["output:probabilities"].shape == (PER_HOUR, 10)
        assert list(dataset["device_id"]) == [agent.device_id] * PER_HOUR
        assert set(dataset["reason"]) == {"low_confidence"}
        assert (dataset["confidence"] < 0.9).all()
        # The inputs are the inverted digits the application sent.
        assert dataset["input:input"].min() >= 0.0
        assert dataset["input:input"].max() <= 1.0

    _cli(fleet, "samples", "capture", "--model", "digits", "--off")
    assert "capture is off everywhere" in _cli(fleet, "samples", "status", "--model", "digits")
