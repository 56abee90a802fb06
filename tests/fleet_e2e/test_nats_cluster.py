"""A fleet on a real 3-node NATS cluster: 20 agents spread over the nodes, two
controllers on PostgreSQL sharing the JetStream consumer, and one node killed in the
middle of a rollout."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from controller.devices.credentials import hash_nats_password
from controller.devices.nats_config import nats_authorization
from tests.conftest import require_service
from tests.nats_cluster import NatsCluster, find_nats_server

from .conftest import GATES, MODEL, PROBATION, WAIT_S, Fleet, ModelFiles, make_fleet
from .test_rollouts import committed, wait_committed

# 20 agent processes, 3 NATS nodes and 2 controllers: about 95 s alone, twice that in the
# full suite on 2 cores.
pytestmark = pytest.mark.timeout(480)

CONTROLLER_USER = "edgefleet-controller"
CONTROLLER_PASSWORD = "controller-secret-for-the-fleet-test"
DEVICES = 20


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    binary = find_nats_server()
    if binary is None:
        require_service("nats-server", "install it with 'apt-get install nats-server'")
        raise AssertionError("unreachable")
    running = NatsCluster(binary, tmp_path / "nats")
    # The controller's login first; devices are added once they enrolled.
    running.auth_file.write_text(
        nats_authorization(
            "edgefleet/v1", [], (CONTROLLER_USER, hash_nats_password(CONTROLLER_PASSWORD))
        )
    )
    running.start(CONTROLLER_USER, CONTROLLER_PASSWORD)
    try:
        yield running
    finally:
        running.stop()


def nats_config(fleet: Fleet, cluster: NatsCluster) -> None:
    """``edgefleet devices nats-config`` on the controller host, then a reload."""
    controller = fleet.controller
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller",
            "devices",
            "nats-config",
            "--out",
            str(cluster.auth_file),
        ],
        env=controller.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{DEVICES} devices" in result.stdout, result.stdout
    cluster.reload()


def reports_read(fleet: Fleet, index: int) -> float:
    """How many device reports one controller read (its Prometheus counter)."""
    text = httpx.get(
        f"{fleet.controllers[index].url}/metrics",
        headers={"Authorization": f"Bearer {fleet.api_token}"},
        timeout=10,
    ).text
    total = 0.0
    for line in text.splitlines():
        if re.match(r"edgefleet_bridge_messages_total\{", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_rollout_over_a_nats_cluster_survives_a_node_killed_mid_rollout(
    tmp_path: Path, cluster: NatsCluster, postgres_url: str, model_files: ModelFiles
) -> None:
    fleet = make_fleet(
        tmp_path,
        cluster.nodes[0].mqtt,
        database_url=postgres_url,
        controllers=2,
        settings={
            "EDGEFLEET_BROKER": cluster.mqtt_url,
            "EDGEFLEET_PUBLIC_BROKER_URL": cluster.mqtt_url,  # devices get every node
            "EDGEFLEET_NATS_URL": cluster.nats_url,
            "EDGEFLEET_MQTT_USERNAME": CONTROLLER_USER,
            "EDGEFLEET_MQTT_PASSWORD": CONTROLLER_PASSWORD,
        },
    )
    try:
        fleet.enroll(DEVICES)
        nats_config(fleet, cluster)
        fleet.start_agents()
        for agent in fleet.agents:
            agent.start_traffic(MODEL)
        version = fleet.api.push_and_release(MODEL, model_files.good_v1)
        rollout_id = fleet.api.rollout(
            f"{MODEL}:{version}", waves="1,50%,100%", soak="2s", probation=PROBATION, gates=GATES
        )
        deadline = time.monotonic() + WAIT_S
        while fleet.api.rollout_status(rollout_id)["wave"] < 1:
            assert time.monotonic() < deadline, fleet.context()
            time.sleep(0.2)

        victim = cluster.nodes[1]
        cluster.kill(victim)  # its devices, and maybe a controller, move to the others
        status = fleet.api.wait_rollout(rollout_id, ("completed",), WAIT_S, fleet.context)
        wait_committed(fleet, rollout_id, DEVICES)

        assert committed(fleet, rollout_id) == DEVICES, status
        assert all(fleet.api.active_version(a.device_id, MODEL) == version for a in fleet.agents)
        fleet.wait_online({agent.device_id for agent in fleet.agents})
        moved = [
            a.device_id for a in fleet.agents if f":{victim.mqtt_port} down" in a.log_tail(20_000)
        ]
        assert moved, "no device was on the killed node"
        for agent in fleet.agents:
            assert fleet.api.device(agent.device_id)["desired"]["sequence"] == 1
        # Both controllers read reports from the one durable consumer ...
        assert reports_read(fleet, 0) > 0
        assert reports_read(fleet, 1) > 0
        # ... and nothing was stored twice.
        with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
            doubled = conn.execute(
                "SELECT device_id, model_name, window_start FROM telemetry "
                "GROUP BY 1, 2, 3 HAVING count(*) > 1"
            ).fetchall()
            events = conn.execute("SELECT count(*) FROM device_events").fetchone()
        assert doubled == []
        assert events is not None
        assert events[0] > 0
        assert all(a.traffic is not None and not a.traffic.failures for a in fleet.agents)
    finally:
        fleet.close()
