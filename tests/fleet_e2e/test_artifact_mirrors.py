"""Artifact mirrors end to end: agents download a release from nginx serving the directory
``edgefleet artifacts export`` wrote, not from the controller (issue 19, item 3).

Everything is real: the controller process with ``EDGEFLEET_ARTIFACT_MIRRORS``, the CLI
export against its data directory, Debian's nginx on a free port, agents as processes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.brokers import BrokerEndpoint, NginxServer, nginx_binary

from .conftest import MODEL, PROBATION, Fleet, ModelFiles, make_fleet

pytestmark = pytest.mark.timeout(240)

ARTIFACT_ROUTE = 'route="/artifacts/sha256/{digest}"'
# Where the bytes come from is the point here, not the model's health: no traffic, and a
# short probation that needs none.
QUICK_PROBATION = PROBATION | {"window_s": 1.0, "min_requests": 0, "max_extension_s": 0.0}


def start_nginx(tmp_path: Path, name: str) -> NginxServer:
    server = NginxServer(nginx_binary(), tmp_path / name / "www", tmp_path / name / "nginx")
    server.start()
    return server


@pytest.fixture
def mirrors(tmp_path: Path) -> Iterator[list[NginxServer]]:
    """Two nginx mirrors, each serving its own (still empty) export directory."""
    servers = [start_nginx(tmp_path, "mirror-a"), start_nginx(tmp_path, "mirror-b")]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def mirrored_fleet(tmp_path: Path, broker: BrokerEndpoint, mirrors: list[NginxServer]) -> Fleet:
    urls = ",".join(server.url for server in mirrors)
    return make_fleet(tmp_path, broker, settings={"EDGEFLEET_ARTIFACT_MIRRORS": urls})


def export(fleet: Fleet, directory: Path, *extra: str) -> str:
    """``edgefleet artifacts export`` on the controller host; returns what it printed."""
    result = subprocess.run(
        [sys.executable, "-m", "controller", "artifacts", "export", str(directory), *extra],
        env=fleet.controller.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def controller_artifact_downloads(fleet: Fleet) -> int:
    """Answers of the controller's artifact route, from its Prometheus metrics."""
    answer = httpx.get(
        f"{fleet.controller.url}/metrics",
        headers={"Authorization": f"Bearer {fleet.api_token}"},
        timeout=10,
    )
    answer.raise_for_status()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in answer.text.splitlines()
        if line.startswith("edgefleet_http_requests_total{") and ARTIFACT_ROUTE in line
    )


def artifacts_served(server: NginxServer) -> list[str]:
    return [uri for status, _, uri in server.served() if status in (200, 206)]


def test_release_reaches_agents_from_nginx_not_the_controller(
    tmp_path: Path, mosquitto: BrokerEndpoint, mirrors: list[NginxServer], model_files: ModelFiles
) -> None:
    fleet = mirrored_fleet(tmp_path, mosquitto, mirrors)
    try:
        fleet.enroll(2)
        fleet.start_agents()
        version = fleet.api.push_and_release(MODEL, model_files.good_v1)
        printed = export(fleet, mirrors[0].root)
        assert "2 artifacts of 1 releases" in printed, printed
        assert "2 linked" in printed, printed
        assert "2 already there" in export(fleet, mirrors[0].root)  # idempotent

        fleet.roll_out(f"{MODEL}:{version}", waves="100%", soak="0s", probation=QUICK_PROBATION)

        for agent in fleet.agents:
            assert fleet.api.active_version(agent.device_id, MODEL) == version
        # Each device took the model and its check bundle from the first mirror.
        assert len(artifacts_served(mirrors[0])) == 2 * len(fleet.agents)
        assert artifacts_served(mirrors[1]) == []
        assert controller_artifact_downloads(fleet) == 0
    finally:
        fleet.close()


def test_corrupt_mirror_copy_is_refused_and_the_next_mirror_serves(
    tmp_path: Path, mosquitto: BrokerEndpoint, mirrors: list[NginxServer], model_files: ModelFiles
) -> None:
    fleet = mirrored_fleet(tmp_path, mosquitto, mirrors)
    try:
        fleet.enroll(2)
        fleet.start_agents()
        version = fleet.api.push_and_release(MODEL, model_files.good_v1)
        export(fleet, mirrors[0].root, "--copy")  # copies: the store's bytes stay intact
        export(fleet, mirrors[1].root)
        model_sha256 = fleet.api.call("GET", f"/api/v1/models/{MODEL}/versions/{version}")["sha256"]
        corrupt = mirrors[0].root / "sha256" / model_sha256
        data = bytearray(corrupt.read_bytes())
        for index in range(len(data) // 2, len(data) // 2 + 8):
            data[index] ^= 0xFF
        corrupt.chmod(0o644)
        corrupt.write_bytes(bytes(data))  # same length, other bytes: only the hash tells

        fleet.roll_out(f"{MODEL}:{version}", waves="100%", soak="0s", probation=QUICK_PROBATION)

        for agent in fleet.agents:
            assert fleet.api.active_version(agent.device_id, MODEL) == version
            rejected = [
                event
                for event in fleet.api.device(agent.device_id)["events"]
                if event["type"] == "mirror_rejected"
            ]
            assert [(e["reason"], e["details"]["mirror"]) for e in rejected] == [
                ("hash_mismatch", f"{mirrors[0].url}/sha256/{model_sha256}")
            ]
        model_uri = f"/sha256/{model_sha256}"
        assert artifacts_served(mirrors[1]) == [model_uri] * len(fleet.agents)
        assert controller_artifact_downloads(fleet) == 0
        # The operator repairs the mirror by exporting again.
        assert "1 damaged copies replaced" in export(fleet, mirrors[0].root, "--copy")
    finally:
        fleet.close()
