"""Device identity on a real Mosquitto run with the configuration edgefleet exports.

``edgefleet devices mosquitto-config`` writes, with a CA in the data directory, a TLS
configuration, certificate copies and a CRL; Mosquitto here includes that configuration
(``include_dir``, as Debian's mosquitto.conf does) and nothing else about listeners. Each
test is one way to get in without being the device (or without TLS); one shows the
device itself gets in, one that the controller's bridge does with its certificate.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from cryptography import x509
from fastapi import FastAPI
from sqlmodel import Session

from controller.app import create_app
from controller.ca import controller_client_files, init_ca
from controller.context import ControllerContext
from controller.db import session_scope
from controller.devices.broker_auth import write_mosquitto_files
from controller.devices.enrollment import decommission_device
from controller.devices.mosquitto_tls import (
    MOSQUITTO_CRL_FILE,
    MOSQUITTO_TLS_CONF_FILE,
    revoked_certificates,
)
from controller.devices.tables import DeviceCertificate, DeviceRecord
from controller.mqtt.bridge import MqttBridge, broker_tls_context
from controller.settings import Settings, load_settings
from protocol import Channel, State, device_topic
from tests.brokers import (
    BROKER_START_TIMEOUT_S,
    BrokerEndpoint,
    free_port,
    terminate,
    wait_for_port,
)
from tests.conftest import mosquitto_binary
from tests.controller.conftest import TEST_PASSPHRASE
from tests.controller.devices.test_broker_auth import assert_confined
from tests.controller.mqtt.test_bridge import eventually, running
from tests.mqtt_client import TestClient
from tests.security.mqtt_tls import ACCEPTED, client_context, issue_device_files, login
from tests.security.test_embedded_broker_tls import TlsFleet

PREFIX = "edgefleet/v1"
RELOAD_TIMEOUT_S = 10.0


class ExportedMosquitto:
    """Mosquitto including the exported ``conf.d/edgefleet-tls.conf``; reload = SIGHUP."""

    def __init__(self, binary: str, fleet: TlsFleet, password_port: int) -> None:
        self.fleet = fleet
        self.password_port = password_port
        self.directory = fleet.work / "mosquitto"
        self.config = self.directory / "conf.d" / MOSQUITTO_TLS_CONF_FILE
        self.log = self.directory / "mosquitto.log"
        self.main_config = self.directory / "mosquitto.conf"
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self.export()
        # Started as root, Mosquitto drops to its own user, which cannot read pytest's
        # private tmp directory; "user" is ignored when not root.
        me = pwd.getpwuid(os.geteuid()).pw_name
        self.main_config.write_text(
            f"user {me}\npersistence false\nlog_dest file {self.log}\n"
            f"log_type error\nlog_type warning\nlog_type notice\n"
            f"include_dir {self.config.parent}\n"
        )

    @property
    def tls_port(self) -> int:
        return self.fleet.settings.mqtts_port

    def endpoint(self, port: int | None = None) -> BrokerEndpoint:
        return BrokerEndpoint("mosquitto", "127.0.0.1", port or self.tls_port)

    def export(self) -> None:
        write_mosquitto_files(
            self.fleet.settings,
            passwords=self.directory / "edgefleet.passwd",
            acl=self.directory / "edgefleet.acl",
            tls_config=self.config,
            password_port=self.password_port,
            environ={},
        )

    def start(self) -> None:
        process = subprocess.Popen(
            [self.binary, "-c", str(self.main_config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._process = process
        try:
            for port in (self.tls_port, self.password_port):
                wait_for_port(
                    "127.0.0.1", port, BROKER_START_TIMEOUT_S, alive=lambda: process.poll() is None
                )
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"mosquitto did not start: {exc}\n{log}") from exc

    def reload(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            terminate(process)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[TlsFleet]:
    work = tmp_path / "fleet"
    work.mkdir()
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": work / "data",
            "database_url": f"sqlite:///{work / 'controller.db'}",
            "tls": True,
            "mqtt_host": "127.0.0.1",
            "mqtts_port": free_port(),
        },
    )
    init_ca(settings.tls_dir, name="test CA")
    app: FastAPI = create_app(settings, environ={"EDGEFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE})
    ctx: ControllerContext = app.state.ctx
    assert ctx.authority is not None
    yield TlsFleet(settings, ctx, ctx.authority, settings.tls_dir / "ca.crt", work)
    ctx.engine.dispose()


@pytest.fixture
def mosquitto(fleet: TlsFleet) -> Iterator[ExportedMosquitto]:
    server = ExportedMosquitto(mosquitto_binary(), fleet, password_port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_the_exported_config_requires_certificates_and_names_the_crl(
    mosquitto: ExportedMosquitto,
) -> None:
    text = mosquitto.config.read_text()
    assert text.splitlines()[3] == "per_listener_settings true"
    for line in (
        f"listener {mosquitto.tls_port} 127.0.0.1",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        f"crlfile {mosquitto.directory.resolve() / MOSQUITTO_CRL_FILE}",
        f"listener {mosquitto.password_port} 127.0.0.1",
    ):
        assert line in text.splitlines()
    assert (mosquitto.directory / "edgefleet-server.key").stat().st_mode & 0o777 == 0o600
    acl = (mosquitto.directory / "edgefleet.acl").read_text()
    assert "user edgefleet-controller" in acl.splitlines()


def test_a_device_logs_in_with_its_certificate_and_stays_on_its_own_topics(
    mosquitto: ExportedMosquitto, fleet: TlsFleet
) -> None:
    _a, a_cert, a_key = fleet.enroll("dev-a")
    b_enrollment, _b_cert, _b_key = fleet.enroll("dev-b")
    controller_context = client_context(fleet.ca_file, *controller_client_files(fleet.settings))
    device = client_context(fleet.ca_file, a_cert, a_key)
    with (
        TestClient(mosquitto.endpoint(), tls_context=controller_context) as controller,
        TestClient(mosquitto.endpoint(), client_id="dev-a", tls_context=device) as client_a,
    ):
        assert_confined(controller, client_a, b_enrollment, "dev-a")


def test_a_certificate_from_another_ca_is_refused(
    mosquitto: ExportedMosquitto, fleet: TlsFleet, tmp_path: Path
) -> None:
    fleet.enroll("dev-a")
    impostor_ca = init_ca(tmp_path / "impostor", name="impostor CA")
    cert, key, _issued = issue_device_files(
        impostor_ca, "dev-a", tmp_path / "impostor-device", now=datetime.now(UTC)
    )
    context = client_context(fleet.ca_file, cert, key)
    outcome = login(mosquitto.tls_port, context=context, client_id="dev-a")
    assert outcome.startswith("tls refused") or outcome == "closed"


def test_an_expired_certificate_is_refused(
    mosquitto: ExportedMosquitto, fleet: TlsFleet, tmp_path: Path
) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=800)
    cert, key, _issued = issue_device_files(
        fleet.authority, "dev-a", tmp_path / "expired", now=long_ago, lifetime=timedelta(days=1)
    )
    context = client_context(fleet.ca_file, cert, key)
    outcome = login(mosquitto.tls_port, context=context, client_id="dev-a")
    assert outcome.startswith("tls refused") or outcome == "closed"


def test_a_decommissioned_device_is_refused_after_export_and_reload(
    mosquitto: ExportedMosquitto, fleet: TlsFleet
) -> None:
    enrollment, cert, key = fleet.enroll("dev-a")
    context = client_context(fleet.ca_file, cert, key)
    assert login(mosquitto.tls_port, context=context, client_id="dev-a") == ACCEPTED
    with session_scope(fleet.ctx.engine) as session:
        decommission_device(session, device_id="dev-a")
    # Mosquitto knows nothing of the database: until the export and reload, it admits it.
    assert login(mosquitto.tls_port, context=context, client_id="dev-a") == ACCEPTED
    mosquitto.export()
    crl = x509.load_pem_x509_crl((mosquitto.directory / MOSQUITTO_CRL_FILE).read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(_serial(cert), 16)) is not None
    mosquitto.reload()
    wait_until(
        lambda: login(mosquitto.tls_port, context=context, client_id="dev-a") != ACCEPTED,
        "the reloaded CRL to refuse dev-a",
    )
    outcome = login(mosquitto.tls_port, context=context, client_id="dev-a")
    assert outcome.startswith("tls refused") or outcome == "closed"
    # Nor can its password get it in over the password listener.
    with_password = login(
        mosquitto.password_port,
        context=client_context(fleet.ca_file),
        client_id="dev-a",
        username=enrollment.mqtt_username,
        password=enrollment.mqtt_password,
    )
    assert with_password.startswith("refused")


def _serial(cert_file: Path) -> str:
    return format(x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number, "x")


def test_another_devices_certificate_cannot_act_as_it(
    mosquitto: ExportedMosquitto, fleet: TlsFleet
) -> None:
    """dev-a's certificate, presented with dev-b's client id and name, is still dev-a:
    it neither takes dev-b's session over nor reads or writes dev-b's topics."""
    _a, a_cert, a_key = fleet.enroll("dev-a")
    _b, b_cert, b_key = fleet.enroll("dev-b")
    controller_context = client_context(fleet.ca_file, *controller_client_files(fleet.settings))
    a_as_b = TestClient(
        mosquitto.endpoint(),
        client_id="dev-b",
        username="dev-b",
        tls_context=client_context(fleet.ca_file, a_cert, a_key),
    )
    b_context = client_context(fleet.ca_file, b_cert, b_key)
    with (
        TestClient(mosquitto.endpoint(), tls_context=controller_context) as controller,
        TestClient(mosquitto.endpoint(), client_id="dev-b", tls_context=b_context) as real_b,
    ):
        real_b.subscribe(device_topic(PREFIX, "dev-b", Channel.DESIRED))
        controller.subscribe(f"{PREFIX}/+/state")
        with a_as_b:
            a_as_b.subscribe(device_topic(PREFIX, "dev-b", Channel.DESIRED))
            a_as_b.publish(device_topic(PREFIX, "dev-b", Channel.STATE), b"forged")
            a_as_b.publish(device_topic(PREFIX, "dev-a", Channel.STATE), b"a, honestly")
            controller.publish(device_topic(PREFIX, "dev-b", Channel.DESIRED), b"for b")
            received = controller.receive()
            assert (received.topic, received.payload) == (
                device_topic(PREFIX, "dev-a", Channel.STATE),
                b"a, honestly",
            )
            # dev-b was not disconnected: it still gets its own message, and only it does.
            assert real_b.receive().payload == b"for b"
            real_b.subscribe(device_topic(PREFIX, "dev-b", Channel.CMD))  # a round trip
            assert a_as_b.messages.empty()
        assert controller.messages.empty()


def test_plain_tcp_to_the_tls_port_fails(mosquitto: ExportedMosquitto, fleet: TlsFleet) -> None:
    enrollment, _cert, _key = fleet.enroll("dev-a")
    for port in (mosquitto.tls_port, mosquitto.password_port):
        outcome = login(
            port,
            context=None,
            client_id="dev-a",
            username=enrollment.mqtt_username,
            password=enrollment.mqtt_password,
        )
        assert outcome == "closed", port


def test_a_device_without_a_certificate_cannot_log_in_on_the_certificate_listener(
    mosquitto: ExportedMosquitto, fleet: TlsFleet
) -> None:
    enrollment, _cert, _key = fleet.enroll("dev-a")
    outcome = login(
        mosquitto.tls_port,
        context=client_context(fleet.ca_file),
        client_id="dev-a",
        username=enrollment.mqtt_username,
        password=enrollment.mqtt_password,
    )
    assert outcome.startswith("tls refused") or outcome == "closed"


def test_a_device_with_its_password_logs_in_over_tls_on_the_password_listener(
    mosquitto: ExportedMosquitto, fleet: TlsFleet
) -> None:
    enrollment, _cert, _key = fleet.enroll("dev-a")

    def with_password(password: str) -> str:
        return login(
            mosquitto.password_port,
            context=client_context(fleet.ca_file),
            client_id="dev-a",
            username=enrollment.mqtt_username,
            password=password,
        )

    # Unlike a certificate, a password needs the export and a reload to be known.
    assert with_password(enrollment.mqtt_password) == "refused (5)"
    mosquitto.export()
    mosquitto.reload()
    wait_until(lambda: with_password(enrollment.mqtt_password) == ACCEPTED, "the new password")
    assert with_password("wrong") == "refused (5)"


def test_certificate_only_exports_no_password_listener(fleet: TlsFleet) -> None:
    settings = fleet.settings.model_copy(update={"device_password_login": False})
    directory = fleet.work / "certificate-only"
    export = write_mosquitto_files(
        settings,
        passwords=directory / "edgefleet.passwd",
        acl=directory / "edgefleet.acl",
        environ={},
    )
    assert export.tls is not None
    assert export.tls.password_port is None
    text = (directory / MOSQUITTO_TLS_CONF_FILE).read_text()
    assert [line for line in text.splitlines() if line.startswith("listener ")] == [
        f"listener {settings.mqtts_port} 127.0.0.1"
    ]
    assert "password_file" not in text


def test_the_controllers_bridge_connects_with_its_client_certificate(
    mosquitto: ExportedMosquitto, fleet: TlsFleet
) -> None:
    _enrollment, cert, key = fleet.enroll("dev-a")
    settings: Settings = fleet.settings.model_copy(
        update={"broker": f"mqtts://127.0.0.1:{mosquitto.tls_port}", "ingest_flush_s": 0.05}
    )
    assert broker_tls_context(settings) is not None
    bridge = MqttBridge(settings=settings, engine=fleet.ctx.engine)
    state = State(device_id="dev-a", online=True, phase="idle", reported_at=datetime.now(UTC))

    def online() -> bool:
        with Session(fleet.ctx.engine) as session:
            row = session.get(DeviceRecord, "dev-a")
            return row is not None and row.online

    async def scenario() -> None:
        async with (
            running(bridge),
            aiomqtt.Client(
                "127.0.0.1",
                mosquitto.tls_port,
                identifier="dev-a",
                tls_context=client_context(fleet.ca_file, cert, key),
            ) as device,
        ):
            topic = device_topic(PREFIX, "dev-a", Channel.STATE)
            await device.publish(topic, state.to_payload(), qos=1, retain=True)
            await eventually(online, "the bridge to store dev-a's state")

    asyncio.run(scenario())


def test_the_crl_lists_revoked_certificates_until_they_expire(fleet: TlsFleet) -> None:
    now = datetime.now(UTC)
    rows = {
        "a1": (now - timedelta(days=1), now + timedelta(days=30)),  # revoked, still valid
        "b2": (now - timedelta(days=1), now - timedelta(seconds=1)),  # revoked, expired
        "c3": (None, now + timedelta(days=30)),  # live
    }
    with session_scope(fleet.ctx.engine) as session:
        for serial, (revoked_at, expires_at) in rows.items():
            session.add(
                DeviceCertificate(
                    serial=serial,
                    device_id="dev-a",
                    sha256=serial * 32,
                    issued_at=now - timedelta(days=2),
                    expires_at=expires_at,
                    revoked_at=revoked_at,
                )
            )
    assert [serial for serial, _at in revoked_certificates(fleet.ctx.engine, now=now)] == ["a1"]
