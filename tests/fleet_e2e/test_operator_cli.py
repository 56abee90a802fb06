"""An operator's rollout through the CLI alone, as docs/operations.md shows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import MODEL, Fleet, ModelFiles
from .harness import FleetAgent, active_version_of

pytestmark = pytest.mark.timeout(420)


def edgefleet(fleet: Fleet, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env |= {"EDGEFLEET_URL": fleet.controller.url, "EDGEFLEET_TOKEN": fleet.api_token}
    result = subprocess.run(
        [sys.executable, "-m", "controller", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout) if "--json" in args else result.stdout


def wait_soaking(fleet: Fleet, rollout_id: str, *, wave: int) -> None:
    deadline = time.monotonic() + 240
    while True:
        status = fleet.api.rollout_status(rollout_id)
        if (status["status"], status["wave"]) == ("soaking", wave):
            return
        assert time.monotonic() < deadline, (status, fleet.context())
        time.sleep(0.3)


def test_enroll_push_release_roll_out_pause_resume_promote_with_the_cli(
    fleet: Fleet, model_files: ModelFiles, tmp_path: Path
) -> None:
    for index in range(2):
        enrolled = edgefleet(fleet, "devices", "enroll", "--labels", "site=lab", "--json")
        agent = FleetAgent(tmp_path / f"cli-agent-{index}", f"lab-{index}")
        agent.enroll(fleet.controller.url, enrolled["token"])
        fleet.agents.append(agent)
    fleet.start_agents()
    for agent in fleet.agents:
        agent.start_traffic(MODEL)
    edgefleet(fleet, "model", "push", str(model_files.good_v1), "--name", MODEL)
    edgefleet(fleet, "model", "release", f"{MODEL}:1")

    created = edgefleet(
        fleet,
        "rollout",
        "create",
        f"{MODEL}:1",
        "--selector",
        "site=lab",
        "--waves",
        "1,100%",
        "--soak",
        "1h",
        "--probation-window",
        "2s",
        "--probation-min-requests",
        "5",
        "--probation-max-drift-psi",  # a few requests' PSI is noise: see conftest.PROBATION
        "100",
        "--json",
    )
    rollout_id = created["id"]
    edgefleet(fleet, "rollout", "pause", rollout_id)
    fleet.api.wait_rollout(rollout_id, ("paused",), 60, fleet.context)
    edgefleet(fleet, "rollout", "resume", rollout_id)
    wait_soaking(fleet, rollout_id, wave=0)
    edgefleet(fleet, "rollout", "promote", rollout_id)  # the canary's hour of soak, skipped
    wait_soaking(fleet, rollout_id, wave=1)
    edgefleet(fleet, "rollout", "promote", rollout_id)
    watched = edgefleet(fleet, "rollout", "status", rollout_id, "--watch")

    status = edgefleet(fleet, "rollout", "status", rollout_id, "--json")
    assert status["status"] == "completed"
    assert "completed" in watched
    kinds = [event["kind"] for event in status["events"]]
    assert kinds.count("wave_promoted") == 2
    assert {"rollout_paused", "rollout_resumed"} <= set(kinds)
    devices = edgefleet(fleet, "devices", "list", "--selector", "site=lab", "--json")
    assert {d["id"]: active_version_of(d, MODEL) for d in devices} == {"lab-0": 1, "lab-1": 1}
