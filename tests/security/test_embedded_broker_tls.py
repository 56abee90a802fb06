"""Device identity on the embedded broker with TLS on: who may log in, and how.

A device enrolled from a controller with a CA holds a client certificate naming it; the
broker's TLS listener verifies it against the CA and ``DeviceAuthPlugin`` checks it is
that device's live certificate. Each test is one way to get in without being the device
(or without TLS), and one test shows the device itself gets in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI

from agent.link.device_identity import DeviceKey
from controller.app import create_app
from controller.ca import CA_CERT_FILE, CertificateAuthority, init_ca
from controller.context import ControllerContext
from controller.db import session_scope
from controller.devices.broker_auth import controller_mqtt_credentials, embedded_broker_config
from controller.devices.enrollment import (
    Enrollment,
    create_enrollment_token,
    decommission_device,
    enroll_device,
)
from controller.devices.tables import DeviceCertificate
from controller.errors import BadRequestError
from controller.settings import Settings, load_settings
from tests.brokers import (
    BROKER_START_TIMEOUT_S,
    BrokerEndpoint,
    free_port,
    run_amqtt,
    wait_for_port,
)
from tests.controller.conftest import TEST_PASSPHRASE
from tests.mqtt_client import TestClient
from tests.security.mqtt_tls import ACCEPTED, client_context, issue_device_files, login

PREFIX = "edgefleet/v1"


@dataclass
class TlsFleet:
    settings: Settings
    ctx: ControllerContext
    authority: CertificateAuthority
    ca_file: Path
    work: Path

    def enroll(self, device_id: str) -> tuple[Enrollment, Path, Path]:
        """Enroll as the agent does (key made here, CSR sent); (answer, cert, key)."""
        with session_scope(self.ctx.engine) as session:
            token, _row = create_enrollment_token(
                session, labels={}, device_id=device_id, ttl_s=60, actor="test"
            )
        key = DeviceKey.generate(device_id)
        with session_scope(self.ctx.engine) as session:
            enrollment = enroll_device(
                session,
                token=token,
                device_id=None,
                settings=self.settings,
                trust_root_envelope=self.ctx.signer.trust_root_envelope,
                csr=key.csr_pem,
                authority=self.authority,
            )
        assert enrollment.client_certificate is not None
        directory = self.work / device_id
        directory.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = directory / "device.crt", directory / "device.key"
        cert_file.write_text(enrollment.client_certificate)
        key_file.write_bytes(key.private_pem)
        return enrollment, cert_file, key_file


def _fleet(tmp_path: Path, **overrides: object) -> Iterator[TlsFleet]:
    tmp_path.mkdir()
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": tmp_path / "data",
            "database_url": f"sqlite:///{tmp_path / 'controller.db'}",
            "tls": True,
            "mqtt_host": "127.0.0.1",
            "mqtt_port": free_port(),
            "mqtts_port": free_port(),
            **overrides,
        },
    )
    init_ca(settings.tls_dir, name="test CA")
    app: FastAPI = create_app(settings, environ={"EDGEFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE})
    ctx: ControllerContext = app.state.ctx
    assert ctx.authority is not None
    config = embedded_broker_config(settings, ctx.engine)
    with run_amqtt(config, settings.mqtt_port):
        wait_for_port("127.0.0.1", settings.mqtts_port, BROKER_START_TIMEOUT_S)
        yield TlsFleet(settings, ctx, ctx.authority, settings.tls_dir / CA_CERT_FILE, tmp_path)
    ctx.engine.dispose()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[TlsFleet]:
    yield from _fleet(tmp_path / "fleet")


@pytest.fixture
def certificate_only_fleet(tmp_path: Path) -> Iterator[TlsFleet]:
    yield from _fleet(tmp_path / "certificate-only", device_password_login=False)


def test_a_device_logs_in_with_its_certificate_alone_and_stays_on_its_topics(
    fleet: TlsFleet,
) -> None:
    _enrollment, cert_file, key_file = fleet.enroll("dev-a")
    context = client_context(fleet.ca_file, cert_file, key_file)
    username, password = controller_mqtt_credentials(fleet.settings)
    controller_endpoint = BrokerEndpoint("amqtt", "127.0.0.1", fleet.settings.mqtt_port)
    device_endpoint = BrokerEndpoint("amqtt", "127.0.0.1", fleet.settings.mqtts_port)
    with TestClient(controller_endpoint, username=username, password=password) as controller:
        controller.subscribe(f"{PREFIX}/+/state")
        # No username, no password: the certificate says who the device is.
        with TestClient(device_endpoint, client_id="dev-a", tls_context=context) as device:
            device.publish(f"{PREFIX}/dev-b/state", b"as b")  # not its topic: dropped
            device.publish(f"{PREFIX}/dev-a/state", b"as a")
        received = controller.receive()
    assert (received.topic, received.payload) == (f"{PREFIX}/dev-a/state", b"as a")


def test_plain_tcp_login_is_refused_when_tls_is_required(fleet: TlsFleet) -> None:
    enrollment, _cert, _key = fleet.enroll("dev-a")
    outcome = login(
        fleet.settings.mqtt_port,
        context=None,
        client_id="dev-a",
        username=enrollment.mqtt_username,
        password=enrollment.mqtt_password,
    )
    assert outcome == "refused (5)"


def test_password_over_tls_works_until_the_operator_turns_it_off(
    fleet: TlsFleet, certificate_only_fleet: TlsFleet
) -> None:
    for each, expected in ((fleet, ACCEPTED), (certificate_only_fleet, "refused (5)")):
        enrollment, _cert, _key = each.enroll("dev-a")
        outcome = login(
            each.settings.mqtts_port,
            context=client_context(each.ca_file),
            client_id="dev-a",
            username=enrollment.mqtt_username,
            password=enrollment.mqtt_password,
        )
        assert outcome == expected


def test_a_certificate_from_another_ca_is_refused(fleet: TlsFleet, tmp_path: Path) -> None:
    fleet.enroll("dev-a")
    impostor_ca = init_ca(tmp_path / "impostor", name="impostor CA")
    cert_file, key_file, _issued = issue_device_files(
        impostor_ca, "dev-a", tmp_path / "impostor-device", now=datetime.now(UTC)
    )
    context = client_context(fleet.ca_file, cert_file, key_file)
    outcome = login(fleet.settings.mqtts_port, context=context, client_id="dev-a")
    assert outcome.startswith("tls refused") or outcome == "closed"


def test_a_device_refuses_a_broker_whose_certificate_another_ca_issued(
    fleet: TlsFleet, tmp_path: Path
) -> None:
    """The device trusts the CA it pinned at enrollment, not any the broker shows."""
    _enrollment, cert_file, key_file = fleet.enroll("dev-a")
    other_ca = init_ca(tmp_path / "other", name="other CA")
    context = client_context(other_ca.tls_dir / CA_CERT_FILE, cert_file, key_file)
    outcome = login(fleet.settings.mqtts_port, context=context, client_id="dev-a")
    assert outcome.startswith("tls refused")
    assert "CERTIFICATE_VERIFY_FAILED" in outcome


def test_an_expired_certificate_is_refused(fleet: TlsFleet, tmp_path: Path) -> None:
    fleet.enroll("dev-a")
    long_ago = datetime.now(UTC) - timedelta(days=800)
    cert_file, key_file, issued = issue_device_files(
        fleet.authority, "dev-a", tmp_path / "expired", now=long_ago, lifetime=timedelta(days=1)
    )
    # The broker's database knows it as dev-a's and not revoked: only its expiry refuses it.
    with session_scope(fleet.ctx.engine) as session:
        session.add(
            DeviceCertificate(
                serial=issued.serial,
                device_id="dev-a",
                sha256=issued.sha256,
                issued_at=long_ago,
                expires_at=issued.not_after,
            )
        )
    context = client_context(fleet.ca_file, cert_file, key_file)
    outcome = login(fleet.settings.mqtts_port, context=context, client_id="dev-a")
    assert outcome.startswith("tls refused") or outcome == "closed"


def test_a_decommissioned_devices_certificate_is_refused(fleet: TlsFleet) -> None:
    _enrollment, cert_file, key_file = fleet.enroll("dev-a")
    context = client_context(fleet.ca_file, cert_file, key_file)
    assert login(fleet.settings.mqtts_port, context=context, client_id="dev-a") == ACCEPTED
    with session_scope(fleet.ctx.engine) as session:
        decommission_device(session, device_id="dev-a")
    assert login(fleet.settings.mqtts_port, context=context, client_id="dev-a") == "refused (5)"


def test_the_certificate_of_an_earlier_enrollment_is_refused(fleet: TlsFleet) -> None:
    _enrollment, old_cert, old_key = fleet.enroll("dev-a")
    with session_scope(fleet.ctx.engine) as session:
        decommission_device(session, device_id="dev-a")
    fleet.work.joinpath("old").mkdir()
    old_cert = old_cert.rename(fleet.work / "old" / "device.crt")
    old_key = old_key.rename(fleet.work / "old" / "device.key")
    _enrollment, new_cert, new_key = fleet.enroll("dev-a")
    new_context = client_context(fleet.ca_file, new_cert, new_key)
    old_context = client_context(fleet.ca_file, old_cert, old_key)
    assert login(fleet.settings.mqtts_port, context=new_context, client_id="dev-a") == ACCEPTED
    assert login(fleet.settings.mqtts_port, context=old_context, client_id="dev-a") == "refused (5)"


def test_another_devices_certificate_cannot_log_in_as_it(fleet: TlsFleet) -> None:
    _a, a_cert, a_key = fleet.enroll("dev-a")
    b_enrollment, _b_cert, _b_key = fleet.enroll("dev-b")
    context = client_context(fleet.ca_file, a_cert, a_key)
    for username, password in (
        (None, None),
        ("dev-b", None),
        ("dev-b", b_enrollment.mqtt_password),
    ):
        outcome = login(
            fleet.settings.mqtts_port,
            context=context,
            client_id="dev-b",
            username=username,
            password=password,
        )
        assert outcome == "refused (5)", (username, password)


def test_a_certificate_for_a_stolen_csr_key_is_not_issued(fleet: TlsFleet) -> None:
    """A CSR whose signature does not verify (the sender does not hold the key) is refused."""
    key = DeviceKey.generate("dev-a")
    body = key.csr_pem.splitlines()
    # Flip one character of the base64 inside the CSR: the signature no longer verifies.
    middle = len(body) // 2
    line = body[middle]
    body[middle] = line[:10] + ("A" if line[10] != "A" else "B") + line[11:]
    with pytest.raises(BadRequestError):
        fleet.authority.issue_device_certificate("\n".join(body), "dev-a", now=datetime.now(UTC))


def test_a_certificate_only_controller_refuses_an_enrollment_without_a_csr(
    certificate_only_fleet: TlsFleet,
) -> None:
    """An old agent would get a password the broker refuses: it is told at enrollment."""
    fleet = certificate_only_fleet
    with session_scope(fleet.ctx.engine) as session:
        token, _row = create_enrollment_token(
            session, labels={}, device_id="dev-a", ttl_s=60, actor="test"
        )
    with (
        pytest.raises(BadRequestError, match="certificate only"),
        session_scope(fleet.ctx.engine) as session,
    ):
        enroll_device(
            session,
            token=token,
            device_id=None,
            settings=fleet.settings,
            trust_root_envelope=fleet.ctx.signer.trust_root_envelope,
            authority=fleet.authority,
        )
