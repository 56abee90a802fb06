"""Whole simulations against a real controller (embedded amqtt broker, SQLite).

``edgefleet demo --no-serve`` runs exactly as a newcomer runs it; the fault scenario runs
40 real agents with every kind of fault and checks the outcome counts planned for it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiclient import AsyncControllerClient
from simulator.controller_process import ControllerProcess, port_or_free
from simulator.demo import prepare_demo_releases
from simulator.report import write_report
from simulator.run import RunResult, run_scenario
from simulator.scenario import load_scenario

FAULTS_SCENARIO = Path(__file__).parent / "faults-small.toml"
DEMO_TIMEOUT_S = 300


@pytest.mark.timeout(DEMO_TIMEOUT_S + 30)
def test_demo_rolls_out_two_models_and_the_canary_stops_the_bad_release_alone(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "demo"
    state_dir.mkdir()
    (state_dir / "left-over-from-an-earlier-run").write_text("stale")

    result = subprocess.run(
        [sys.executable, "-m", "controller", "demo", "--no-serve", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert not (state_dir / "left-over-from-an-earlier-run").exists()
    assert "every expected outcome was met" in result.stdout
    summary = json.loads((state_dir / "report" / "summary.json").read_text())
    good, second, bad = summary["rollouts"]
    assert (good["status"], good["device_outcomes"]["committed"]) == ("completed", 50)
    assert (second["status"], second["device_outcomes"]["committed"]) == ("completed", 50)
    assert bad["status"] == "aborted"
    assert bad["device_outcomes"] == {"committed": 0, "failed": 0, "rolled_back": 1}
    # The bad release of the first model ran at the same time as the second model's.
    assert bad["started_s"] < second["started_s"] + second["duration_s"]
    assert summary["final_releases"] == {f"{good['release']}, {second['release']}": 50}
    assert (state_dir / "report" / "report.html").stat().st_size > 0


@pytest.fixture(scope="module")
def sim_controller(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, dict[str, str]]]:
    state_dir = tmp_path_factory.mktemp("sim-controller")
    controller = ControllerProcess(state_dir, port_or_free(0), port_or_free(0))
    controller.start()
    try:
        token = controller.create_token("operator")

        async def prepare() -> dict[str, str]:
            api = AsyncControllerClient(controller.url, token)
            try:
                return await prepare_demo_releases(api, state_dir / "models")
            finally:
                await api.close()

        yield controller.url, token, asyncio.run(prepare())
    finally:
        controller.stop()


@pytest.mark.timeout(300)
def test_faults_end_in_the_planned_outcome_counts(
    sim_controller: tuple[str, str, dict[str, str]], tmp_path: Path
) -> None:
    url, token, releases = sim_controller
    scenario = load_scenario(FAULTS_SCENARIO)

    async def simulate() -> RunResult:
        api = AsyncControllerClient(url, token)
        try:
            return await run_scenario(
                scenario, seed=5, api=api, work_dir=tmp_path / "fleet", releases=releases
            )
        finally:
            await api.close()

    result = asyncio.run(simulate())
    summary = write_report(result, tmp_path / "report")

    assert summary["expectation_failures"] == []
    rollout = summary["rollouts"][0]
    assert rollout["device_outcomes"] == {"committed": 35, "rolled_back": 2, "failed": 3}
    counters = summary["counters"]
    assert counters["kills"] == 3
    assert counters["broker_cuts"] > 0
    assert counters["corrupted_downloads"] > 0
    by_device = {device["device_id"]: device for device in summary["devices"]}
    reasons = {
        event["reason"]
        for device in by_device.values()
        for event in device["events"]
        if event["type"] == "failed"
    }
    assert {"insufficient_disk", "hash_mismatch"} <= reasons
