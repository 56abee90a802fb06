"""`edgefleet controller serve` as a real process: startup, probes, broker, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.brokers import BrokerEndpoint, MosquittoServer, free_port, wait_for_port
from tests.mqtt_client import TestClient

STARTUP_TIMEOUT_S = 60.0
MQTT_USER, MQTT_PASSWORD = "controller-admin", "a test password"
SHUTDOWN_TIMEOUT_S = 30.0


@dataclass
class RunningController:
    process: subprocess.Popen[str]
    http_port: int
    mqtt_port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def start_controller(
    data_dir: Path,
    mqtt_port: int,
    *,
    broker: str = "embedded",
    mqtt_user: str = MQTT_USER,
    mqtt_password: str = MQTT_PASSWORD,
) -> RunningController:
    http_port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller",
            "controller",
            "serve",
            "--port",
            str(http_port),
            "--mqtt-port",
            str(mqtt_port),
            "--data-dir",
            str(data_dir),
            "--broker",
            broker,
        ],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")},
            "EDGEFLEET_MQTT_USERNAME": mqtt_user,
            "EDGEFLEET_MQTT_PASSWORD": mqtt_password,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return RunningController(process, http_port, mqtt_port, data_dir)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[RunningController]:
    running = start_controller(tmp_path / "data", free_port())
    try:
        wait_for_port(
            "127.0.0.1",
            running.http_port,
            STARTUP_TIMEOUT_S,
            alive=lambda: running.process.poll() is None,
        )
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
        running.process.communicate()


def test_serve_answers_probes_and_runs_the_embedded_broker(controller: RunningController) -> None:
    assert httpx.get(f"{controller.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{controller.url}/readyz").json() == {"status": "ready"}
    assert httpx.get(f"{controller.url}/api/v1/models").status_code == 401
    endpoint = BrokerEndpoint("amqtt", "127.0.0.1", controller.mqtt_port)
    with TestClient(endpoint, username=MQTT_USER, password=MQTT_PASSWORD) as mqtt:
        mqtt.subscribe("edgefleet-test/#")
        mqtt.publish("edgefleet-test/ping", b"pong")
        assert mqtt.receive().payload == b"pong"
    assert (controller.data_dir / "keys" / "trust-root.json").exists()


def test_the_embedded_broker_refuses_anonymous_clients(controller: RunningController) -> None:
    endpoint = BrokerEndpoint("amqtt", "127.0.0.1", controller.mqtt_port)
    with pytest.raises(ConnectionError, match="refused"), TestClient(endpoint):
        pass


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_gracefully(controller: RunningController, signum: int) -> None:
    controller.process.send_signal(signum)
    output, _ = controller.process.communicate(timeout=SHUTDOWN_TIMEOUT_S)
    assert controller.process.returncode == 0, output
    assert "embedded MQTT broker stopped" in output
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", controller.mqtt_port), 1).close()


def test_first_start_says_where_the_trust_root_is(tmp_path: Path) -> None:
    running = start_controller(tmp_path / "data", free_port())
    wait_for_port("127.0.0.1", running.http_port, STARTUP_TIMEOUT_S)
    running.process.terminate()
    output, _ = running.process.communicate(timeout=SHUTDOWN_TIMEOUT_S)
    assert f"the trust root for devices is {tmp_path / 'data' / 'keys' / 'trust-root.json'}" in (
        output
    )


def test_taken_mqtt_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        running = start_controller(tmp_path / "data", taken)
        started = time.monotonic()
        output, _ = running.process.communicate(timeout=STARTUP_TIMEOUT_S)
    assert running.process.returncode == 3, output
    assert f"MQTT port 127.0.0.1:{taken} is taken" in output
    assert time.monotonic() - started < STARTUP_TIMEOUT_S


def test_refused_broker_credentials_exit_with_exit_broker_auth(
    password_mosquitto: tuple[MosquittoServer, str, str], tmp_path: Path
) -> None:
    server, user, _password = password_mosquitto
    running = start_controller(
        tmp_path / "data",
        free_port(),
        broker=server.endpoint.url,
        mqtt_user=user,
        mqtt_password="wrong password",
    )
    output, _ = running.process.communicate(timeout=STARTUP_TIMEOUT_S)

    assert running.process.returncode == 4, output  # EXIT_BROKER_AUTH
    assert "refused the controller's credentials" in output
    assert "fix EDGEFLEET_MQTT_USERNAME and EDGEFLEET_MQTT_PASSWORD" in output
