"""A fleet over TLS with device certificates, as an operator sets it up.

``edgefleet ca init``, then ``edgefleet controller serve --tls`` with the embedded broker
and ``device_password_login`` off; the API over HTTPS verified against the CA; agents
enrolled with ``--ca-sha256`` from their token's answer, then ``edgefleet-agent run``:
MQTT over TLS with their client certificates, artifacts over HTTPS from the pinned CA,
no device password accepted on either listener. A wrong CA pin stops enrollment before
the token leaves the device; a decommissioned device loses its session and cannot come
back while the others carry on.

The tests share one fleet per worker, in whatever order they come: the one that
decommissions a device leaves the other enrolled and running.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from agent.cli import EXIT_BROKER_AUTH, EXIT_ENROLL_REFUSED
from simulator.controller_process import ControllerProcess
from tests.security.mqtt_tls import client_context, login

from .conftest import MODEL, Fleet, ModelFiles
from .harness import Api, FleetAgent

# A controller, three enrollments, two agents and two rollouts on 2 cores: about a minute.
pytestmark = pytest.mark.timeout(300)

# The embedded broker looks for revoked clients every 5 s; the agent then backs off.
DECOMMISSION_WAIT_S = 60.0
OPERATOR_HOST_NAME = "fleet.example.test"


def edgefleet_ca_init(data_dir: Path) -> str:
    """``edgefleet ca init`` as an operator runs it; returns the CA SHA-256 it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    # Devices reach it by 127.0.0.1 here; elsewhere by a name the controller cannot guess.
    hosts = ["--host", "127.0.0.1", "--host", OPERATOR_HOST_NAME]
    command = ["ca", "init", "--data-dir", str(data_dir), *hosts]
    result = subprocess.run(
        [sys.executable, "-m", "controller", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    printed = re.search(r"CA SHA-256: ([0-9a-f]{64})", result.stdout)
    assert printed is not None, result.stdout
    return printed.group(1)


@pytest.fixture(scope="module")
def ca_sha256_printed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data_dir = tmp_path_factory.mktemp("tls-fleet") / "controller-data"
    return data_dir, edgefleet_ca_init(data_dir)


@pytest.fixture(scope="module")
def tls_fleet(ca_sha256_printed: tuple[Path, str]) -> Iterator[Fleet]:
    """A controller with TLS and certificate-only device logins, two agents running."""
    data_dir, _ = ca_sha256_printed
    directory = data_dir.parent
    controller = ControllerProcess(
        directory / "controller",
        data_dir=data_dir,
        tls=True,
        settings={
            "EDGEFLEET_DEVICE_PASSWORD_LOGIN": "false",
            "EDGEFLEET_RECONCILE_INTERVAL_S": "5",
            "EDGEFLEET_INGEST_FLUSH_S": "0.1",
        },
    )
    controller.start()
    token = controller.create_token("admin")
    api = Api(controller.url, token, verify=controller.verify())
    fleet = Fleet(directory, [controller], api, token)
    try:
        fleet.enroll(2)  # each with --ca-sha256 from its token's answer
        fleet.start_agents()
        yield fleet
    finally:
        fleet.close()


def agent_config(agent: FleetAgent) -> dict[str, object]:
    return tomllib.loads((agent.directory / "agent.toml").read_text())


def test_enrolled_agents_pin_the_ca_that_ca_init_printed(
    tls_fleet: Fleet, ca_sha256_printed: tuple[Path, str]
) -> None:
    _, printed = ca_sha256_printed
    answer = tls_fleet.api.call("POST", "/api/v1/enrollment-tokens", json={"labels": {}})
    assert answer["ca_sha256"] == printed
    served = httpx.get(
        f"{tls_fleet.controller.url}/api/v1/ca.pem", verify=tls_fleet.controller.verify()
    )
    for agent in tls_fleet.agents:
        config = agent_config(agent)
        assert str(config["controller_url"]).startswith("https://")
        assert str(config["broker_url"]).startswith("mqtts://")
        assert (agent.directory / str(config["tls_ca_file"])).read_text() == served.text
        assert (agent.directory / str(config["tls_key_file"])).stat().st_mode & 0o077 == 0


def test_the_server_certificate_keeps_the_names_ca_init_was_given(tls_fleet: Fleet) -> None:
    pem = ssl.get_server_certificate(("127.0.0.1", tls_fleet.controller.http_port))
    names = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert OPERATOR_HOST_NAME in names.value.get_values_for_type(x509.DNSName)


def edgefleet_cli(fleet: Fleet, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "SSL_"))}
    clean |= {"EDGEFLEET_URL": fleet.controller.url, "EDGEFLEET_TOKEN": fleet.api_token, **env}
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_verifies_the_controller_against_the_ca_in_ssl_cert_file(
    tls_fleet: Fleet,
) -> None:
    ca_file = str(tls_fleet.controller.ca_file)
    listed = edgefleet_cli(tls_fleet, "devices", "list", "--json", SSL_CERT_FILE=ca_file)
    unverified = edgefleet_cli(tls_fleet, "devices", "list", "--json")

    assert listed.returncode == 0, listed.stderr
    # cam-001 stays enrolled whatever ran before (cam-000 is decommissioned below).
    assert "cam-001" in {d["id"] for d in json.loads(listed.stdout)}
    assert unverified.returncode == 1
    assert "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
    assert "set SSL_CERT_FILE to the CA's certificate" in unverified.stderr


def test_a_wrong_ca_sha256_stops_enrollment_before_the_token_is_sent(
    tls_fleet: Fleet, tmp_path: Path
) -> None:
    answer = tls_fleet.api.call(
        "POST", "/api/v1/enrollment-tokens", json={"labels": {"site": "elsewhere"}}
    )
    wrong = hashlib.sha256(b"another controller's CA").hexdigest()
    agent = FleetAgent(tmp_path / "device", "cam-900")

    refused = agent.run_enroll(tls_fleet.controller.url, answer["token"], ca_sha256=wrong)

    assert refused.returncode == EXIT_ENROLL_REFUSED, refused.stdout + refused.stderr
    assert f"the controller's CA has SHA-256 {answer['ca_sha256']}" in refused.stderr
    assert f"not the expected {wrong}" in refused.stderr
    assert not agent.directory.exists()
    # The token never left the device: it still enrolls, with the right pin.
    agent.enroll(tls_fleet.controller.url, answer["token"], ca_sha256=answer["ca_sha256"])
    tls_fleet.api.call("DELETE", "/api/v1/devices/cam-900")  # not a member of the fleet


def test_no_device_password_is_accepted_on_either_listener(tls_fleet: Fleet) -> None:
    controller = tls_fleet.controller
    agent = tls_fleet.agents[0]
    config = agent_config(agent)
    username, password = str(config["mqtt_username"]), str(config["mqtt_password"])
    without_certificate = client_context(controller.ca_file)
    over_tls = login(
        controller.mqtts_port,
        context=without_certificate,
        client_id=agent.device_id,
        username=username,
        password=password,
    )
    plain = login(
        controller.mqtt_port,
        context=None,
        client_id=agent.device_id,
        username=username,
        password=password,
    )
    assert (over_tls, plain) == ("refused (5)", "refused (5)")
    # A client that drops the socket once refused is no error of the broker's.
    assert "Traceback" not in controller.log.read_text(errors="replace")


def test_a_release_reaches_both_devices_then_a_decommissioned_one_is_cut_off(
    tls_fleet: Fleet, model_files: ModelFiles
) -> None:
    # Downloads over HTTPS from the pinned CA, MQTT over TLS with client certificates.
    baseline = tls_fleet.install_baseline(model_files)
    version = int(baseline.split(":")[1])
    for agent in tls_fleet.agents:
        assert tls_fleet.api.active_version(agent.device_id, MODEL) == version
    retired, kept = tls_fleet.agents
    assert retired.process is not None

    tls_fleet.api.call("DELETE", f"/api/v1/devices/{retired.device_id}")

    # Its session ends at the broker's next sweep and its reconnection is refused, which
    # the agent takes as final.
    try:
        code = retired.process.wait(timeout=DECOMMISSION_WAIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{retired.device_id} still runs\n{tls_fleet.context()}")
    assert code == EXIT_BROKER_AUTH, retired.log_tail()
    assert "refused the credentials" in retired.log_tail()
    version = tls_fleet.api.push_and_release(MODEL, model_files.good_v2)
    tls_fleet.roll_out(f"{MODEL}:{version}", waves="100%")
    assert tls_fleet.api.active_version(kept.device_id, MODEL) == version
    assert kept.traffic is not None
    assert kept.traffic.ok > 0
    assert not kept.traffic.failures
    assert "Traceback" not in tls_fleet.controller.log.read_text(errors="replace")
