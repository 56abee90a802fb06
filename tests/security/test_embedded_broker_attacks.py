"""Attacks on the embedded MQTT broker from anyone who can reach its port, without a login.

Each attack runs against ``EmbeddedBroker`` (it must fail) and against plain amqtt 0.12
(it must still work there: this proves the test can see the attack land, and tells when
an amqtt release fixes it so our correction can go).
"""

from __future__ import annotations

import queue
import socket
import struct
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from amqtt.broker import Broker
from fastapi import FastAPI

from controller.devices.broker_auth import controller_mqtt_credentials, embedded_broker_config
from controller.devices.enrollment import Enrollment
from controller.mqtt.embedded_broker import BrokerLimits, EmbeddedBroker
from controller.settings import Settings
from tests.brokers import BrokerEndpoint, free_port, run_amqtt
from tests.controller import conftest as controller_fixtures
from tests.controller.devices.test_broker_auth import LoginClient, enroll, topic
from tests.security.http_server import closed_by_server

# The controller's fixtures: its app and settings over a fresh database.
app, settings, ctx = controller_fixtures.app, controller_fixtures.settings, controller_fixtures.ctx
TIMEOUT_S = 10.0
# Long enough for plain amqtt to act on a packet it was sent; only the unsafe broker waits.
SETTLE_S = 1.0
CONTROLLER_CLIENT_ID = "edgefleet-controller-test"
TEST_LIMITS = BrokerLimits(connect_timeout_s=0.5, max_connections=8, max_packet_bytes=64 * 1024)

BROKERS = {
    "edgefleet": partial(EmbeddedBroker, limits=TEST_LIMITS),
    "plain-amqtt": Broker,
}


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'controller.db'}"  # the attacks do not depend on it


@pytest.fixture(params=sorted(BROKERS))
def broker(
    request: pytest.FixtureRequest, app: FastAPI, settings: Settings
) -> Iterator[tuple[str, BrokerEndpoint, Settings, Enrollment]]:
    device = enroll(app, "dev-a")
    port = free_port()
    broker_settings = settings.model_copy(update={"mqtt_host": "127.0.0.1", "mqtt_port": port})
    config = embedded_broker_config(broker_settings, ctx(app).engine)
    with run_amqtt(config, port, BROKERS[request.param]) as endpoint:
        yield request.param, endpoint, broker_settings, device


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def connect_packet(client_id: str, username: str, password: str, *, clean: bool) -> bytes:
    flags = 0x80 | 0x40 | (0x02 if clean else 0)
    variable = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
    payload = _string(client_id) + _string(username) + _string(password)
    body = variable + payload
    return b"\x10" + _remaining_length(len(body)) + body


def raw_connection(endpoint: BrokerEndpoint) -> socket.socket:
    return socket.create_connection((endpoint.host, endpoint.port), timeout=TIMEOUT_S)


def closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """True when the broker closes ``sock`` within ``within_s`` (after any CONNACK)."""
    sock.settimeout(within_s)
    return closed_by_server(sock)


def wrong_password_connect(
    endpoint: BrokerEndpoint, client_id: str, username: str, *, clean: bool
) -> int | None:
    """Log in as ``username`` with a wrong password; return the CONNACK's return code."""
    with raw_connection(endpoint) as sock:
        sock.sendall(connect_packet(client_id, username, "wrong password", clean=clean))
        connack = sock.recv(4)
    return connack[3] if len(connack) == 4 else None


def test_wrong_password_with_the_controllers_client_id_keeps_its_subscriptions(
    broker: tuple[str, BrokerEndpoint, Settings, Enrollment],
) -> None:
    kind, endpoint, settings, device = broker
    username, password = controller_mqtt_credentials(settings)
    state = topic(device.device_id, "state")
    with LoginClient(endpoint, username, password, client_id=CONTROLLER_CLIENT_ID) as controller:
        controller.subscribe(state)
        code = wrong_password_connect(endpoint, CONTROLLER_CLIENT_ID, username, clean=True)
        assert code == 5  # not authorized: the attacker was refused on both brokers
        with LoginClient(endpoint, device.mqtt_username, device.mqtt_password) as client:
            client.publish(state, b"still heard")
        try:
            received = controller.messages.get(
                timeout=TIMEOUT_S if kind == "edgefleet" else SETTLE_S
            )
        except queue.Empty:
            received = None
    if kind == "edgefleet":
        assert received is not None
        assert received.payload == b"still heard"
    else:  # amqtt deleted the controller's session before it checked the password
        assert received is None


def test_wrong_password_with_a_devices_client_id_does_not_disconnect_it(
    broker: tuple[str, BrokerEndpoint, Settings, Enrollment],
) -> None:
    kind, endpoint, _settings, device = broker
    disconnects: queue.Queue[object] = queue.Queue()
    with LoginClient(endpoint, device.mqtt_username, device.mqtt_password) as client:
        client._client.on_disconnect = lambda *args: disconnects.put(args)
        code = wrong_password_connect(endpoint, device.device_id, device.device_id, clean=False)
        assert code == 5
        try:
            disconnects.get(timeout=SETTLE_S if kind == "edgefleet" else TIMEOUT_S)
            cut_off = True
        except queue.Empty:
            cut_off = False
    assert cut_off is (kind == "plain-amqtt")


def test_a_socket_that_never_sends_connect_is_closed(
    broker: tuple[str, BrokerEndpoint, Settings, Enrollment],
) -> None:
    kind, endpoint, _settings, _device = broker
    with raw_connection(endpoint) as sock:
        closed = closed_by_peer(sock, within_s=TIMEOUT_S if kind == "edgefleet" else SETTLE_S * 2)
    assert closed is (kind == "edgefleet")


def test_connections_past_the_cap_are_closed_at_once(
    broker: tuple[str, BrokerEndpoint, Settings, Enrollment],
) -> None:
    kind, endpoint, _settings, _device = broker
    if kind != "edgefleet":
        pytest.skip("plain amqtt has no cap unless configured, and then queues connections")
    held = [raw_connection(endpoint) for _ in range(TEST_LIMITS.max_connections)]
    try:
        with raw_connection(endpoint) as extra:
            # Closed before the CONNECT timeout could have closed it.
            assert closed_by_peer(extra, within_s=TEST_LIMITS.connect_timeout_s / 2)
    finally:
        for sock in held:
            sock.close()


def test_a_200_mib_publish_from_a_device_closes_its_connection_before_it_is_read(
    broker: tuple[str, BrokerEndpoint, Settings, Enrollment],
) -> None:
    kind, endpoint, _settings, device = broker
    with raw_connection(endpoint) as sock:
        sock.sendall(
            connect_packet(device.device_id, device.mqtt_username, device.mqtt_password, clean=True)
        )
        assert sock.recv(4)[3] == 0  # accepted
        name = _string(topic(device.device_id, "state"))
        announced = 200 * 1024 * 1024
        sock.sendall(b"\x30" + _remaining_length(announced) + name + b"\0" * 256 * 1024)
        closed = closed_by_peer(sock, within_s=TIMEOUT_S if kind == "edgefleet" else SETTLE_S * 2)
    # amqtt keeps reading, buffering up to the 200 MiB the header announced.
    assert closed is (kind == "edgefleet")
