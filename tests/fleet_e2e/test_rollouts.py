"""Rollouts end to end: a real controller, a real Mosquitto, real agents on ONNX Runtime.

These are the scenarios an operator trusts edgefleet with: a good release reaches every
matching device in waves; a bad one stops at the canary, which rolls back by itself; a
controller crash, a broker restart or devices that were offline do not change the
outcome; two controllers on PostgreSQL share the work without doing any of it twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.brokers import BrokerEndpoint, MosquittoServer

from .conftest import GATES, MODEL, PROBATION, WAIT_S, Fleet, ModelFiles, make_fleet

# Each scenario starts a controller and up to 20 agents on 2 cores: minutes, not seconds.
pytestmark = pytest.mark.timeout(420)


def outcomes(fleet: Fleet, rollout_id: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for wave in fleet.api.rollout_status(rollout_id)["waves"]:
        for outcome, count in wave["outcomes"].items():
            totals[outcome] = totals.get(outcome, 0) + count
    return totals


def committed(fleet: Fleet, rollout_id: str) -> int:
    counts = outcomes(fleet, rollout_id)
    return counts.get("committed", 0) + counts.get("committed_unobserved", 0)


def wait_committed(fleet: Fleet, rollout_id: str, count: int) -> None:
    """Devices that were offline for a moment join the rollout when they are back."""
    deadline = time.monotonic() + WAIT_S
    while committed(fleet, rollout_id) < count:
        assert time.monotonic() < deadline, (outcomes(fleet, rollout_id), fleet.context())
        time.sleep(0.5)


def start_good_rollout(
    fleet: Fleet, model_files: ModelFiles, *, devices: int, waves: str
) -> tuple[str, int]:
    """Devices serving traffic, and a rollout of a good release to them; returns its id."""
    fleet.enroll(devices)
    fleet.start_agents()
    for agent in fleet.agents:
        agent.start_traffic(MODEL)
    version = fleet.api.push_and_release(MODEL, model_files.good_v1)
    rollout_id = fleet.api.rollout(
        f"{MODEL}:{version}", waves=waves, soak="2s", probation=PROBATION, gates=GATES
    )
    return rollout_id, version


def wait_until(fleet: Fleet, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, fleet.context()
        time.sleep(0.2)


def deployments_received(fleet: Fleet, device_id: str) -> list[dict[str, Any]]:
    """The rollout assignments of a device, from its detail page."""
    history: list[dict[str, Any]] = fleet.api.device(device_id)["assignments"]
    return history


def active_version(fleet: Fleet, device_id: str) -> int | None:
    return fleet.api.active_version(device_id, MODEL)


def test_a_good_release_rolls_out_in_waves_to_20_devices_and_all_commit(
    fleet: Fleet, model_files: ModelFiles
) -> None:
    fleet.enroll(20)
    fleet.start_agents()
    for agent in fleet.agents:
        agent.start_traffic(MODEL)
    version = fleet.api.push_and_release(MODEL, model_files.good_v1)

    status = fleet.roll_out(f"{MODEL}:{version}", waves="1,10%,50%,100%")

    assert [wave["target"] for wave in status["waves"]] == [1, 2, 10, 20]
    assert committed(fleet, status["id"]) == 20, status
    passed = [e for e in status["events"] if e["kind"] == "wave_passed"]
    assert len(passed) == 4
    assert all(active_version(fleet, agent.device_id) == version for agent in fleet.agents)
    assert all(agent.traffic is not None and not agent.traffic.failures for agent in fleet.agents)


# One kind of bad model is enough here: what makes a model bad is judged on the device
# (tests/agent/e2e/test_live_probation.py covers latency, NaNs, errors and drift), and a
# too slow release is rolled back through the same canary path.
def test_a_bad_release_is_rolled_back_by_the_canary_and_reaches_no_other_device(
    fleet: Fleet, model_files: ModelFiles
) -> None:
    fleet.enroll(4)
    fleet.start_agents()
    baseline = fleet.install_baseline(model_files)
    time.sleep(3)  # the devices measure the baseline model's latency
    version = fleet.api.push_and_release(
        MODEL, model_files.nan_live, model_files.nan_live_validation
    )

    status = fleet.roll_out(f"{MODEL}:{version}", waves="1,100%", final=("aborted",))

    assert status["last_good"] == baseline
    assert outcomes(fleet, status["id"]) == {"rolled_back": 1}, status
    failed_gates = {gate["name"] for gate in status["gates"] if not gate["passed"]}
    assert {"failure_rate", "rollback_rate"} <= failed_gates
    received = {
        agent.device_id: status["id"]
        in [d["rollout_id"] for d in deployments_received(fleet, agent.device_id)]
        for agent in fleet.agents
    }
    assert sum(received.values()) == 1, received  # the canary, and nobody else
    for agent in fleet.agents:
        assert active_version(fleet, agent.device_id) == int(baseline.split(":")[1])
        if not received[agent.device_id]:
            events = fleet.api.device(agent.device_id)["events"]
            assert all((e.get("version") or 0) != version for e in events)


def test_a_controller_killed_mid_rollout_resumes_without_applying_a_wave_twice(
    fleet: Fleet, model_files: ModelFiles
) -> None:
    rollout_id, _version = start_good_rollout(fleet, model_files, devices=6, waves="1,50%,100%")
    wait_until(fleet, lambda: fleet.api.rollout_status(rollout_id)["wave"] >= 1)

    fleet.controller.kill()
    fleet.controller.start()
    status = fleet.api.wait_rollout(rollout_id, ("completed",), WAIT_S, fleet.context)

    assert committed(fleet, rollout_id) == 6
    for agent in fleet.agents:
        detail = fleet.api.device(agent.device_id)
        assert detail["desired"]["sequence"] == 1, detail  # one deployment, ever
        assert len(deployments_received(fleet, agent.device_id)) == 1
    assert [e["kind"] for e in status["events"]].count("wave_started") == 3


def test_a_broker_restarted_mid_rollout_does_not_stop_it(
    fleet: Fleet, model_files: ModelFiles, restartable_mosquitto: MosquittoServer
) -> None:
    rollout_id, version = start_good_rollout(fleet, model_files, devices=5, waves="1,100%")
    wait_until(fleet, lambda: bool(fleet.api.rollout_status(rollout_id)["waves"][0]["outcomes"]))

    restartable_mosquitto.restart()  # retained desired states and sessions are gone
    fleet.api.wait_rollout(rollout_id, ("completed",), WAIT_S, fleet.context)
    wait_committed(fleet, rollout_id, 5)

    assert all(active_version(fleet, agent.device_id) == version for agent in fleet.agents)


def test_devices_offline_during_the_rollout_converge_when_they_return(
    fleet: Fleet, model_files: ModelFiles
) -> None:
    fleet.enroll(5)
    online, offline = fleet.agents[:3], fleet.agents[3:]
    fleet.start_agents(online)
    version = fleet.api.push_and_release(MODEL, model_files.good_v1)

    status = fleet.roll_out(f"{MODEL}:{version}", waves="100%")
    assert committed(fleet, status["id"]) == 3

    fleet.start_agents(offline)
    wait_committed(fleet, status["id"], 5)
    assert all(active_version(fleet, agent.device_id) == version for agent in fleet.agents)


def test_two_controllers_on_postgres_share_the_work_and_store_nothing_twice(
    tmp_path: Path, mosquitto: BrokerEndpoint, postgres_url: str, model_files: ModelFiles
) -> None:
    fleet = make_fleet(
        tmp_path, mosquitto, database_url=postgres_url, controllers=2, shared_group="edgefleet"
    )
    try:
        fleet.enroll(5)
        fleet.start_agents()
        for agent in fleet.agents:
            agent.start_traffic(MODEL)
        version = fleet.api.push_and_release(MODEL, model_files.good_v1)

        status = fleet.roll_out(f"{MODEL}:{version}", waves="1,100%")

        assert committed(fleet, status["id"]) == 5
        for agent in fleet.agents:
            assert fleet.api.device(agent.device_id)["desired"]["sequence"] == 1
        time.sleep(3)  # both controllers ingest a few more telemetry windows
        with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
            doubled = conn.execute(
                "SELECT device_id, model_name, window_start FROM telemetry "
                "GROUP BY 1, 2, 3 HAVING count(*) > 1"
            ).fetchall()
            windows = conn.execute("SELECT count(*) FROM telemetry").fetchone()
            events = conn.execute("SELECT count(*) FROM device_events").fetchone()
        assert doubled == []
        assert windows is not None
        assert windows[0] > 0
        assert events is not None
        assert events[0] > 0
    finally:
        fleet.close()
