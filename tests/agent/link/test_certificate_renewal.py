"""Renewing a device's client certificate over real HTTPS, and finishing a crashed renewal."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from agent.config import AgentConfig
from agent.daemon import AgentDaemon
from agent.errors import HttpStatusError
from agent.link.certificate_renewal import (
    certificate_expiry,
    finish_interrupted_renewal,
    renew_certificate,
)
from agent.link.device_identity import DeviceKey
from agent.tls import pinned_ca_context
from controller.ca import CA_CERT_FILE, init_ca
from controller.db import session_scope
from controller.devices.enrollment import (
    create_enrollment_token,
    decommission_device,
    enroll_device,
)
from controller.devices.tables import DeviceCertificate
from controller.tokens import Role
from tests.security.http_server import ServedController, controller_settings, served


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ServedController]:
    settings = controller_settings(tmp_path / "controller", tls=True)
    init_ca(settings.tls_dir, name="test CA")
    with served(settings) as controller:
        yield controller


def _enrolled_device(controller: ServedController, directory: Path) -> AgentConfig:
    """A device enrolled with a CSR, its files as ``edgefleet-agent enroll`` writes them."""
    ctx = controller.app.state.ctx
    with session_scope(ctx.engine) as session:
        token, _row = create_enrollment_token(
            session, labels={}, device_id="cam-1", ttl_s=60, actor="test"
        )
    key = DeviceKey.generate("cam-1")
    with session_scope(ctx.engine) as session:
        enrollment = enroll_device(
            session,
            token=token,
            device_id=None,
            settings=ctx.settings,
            trust_root_envelope=ctx.signer.trust_root_envelope,
            csr=key.csr_pem,
            authority=ctx.authority,
        )
    tls = directory / "tls"
    tls.mkdir(parents=True)
    (tls / "device.key").write_bytes(key.private_pem)
    (tls / "device.crt").write_text(enrollment.client_certificate or "")
    shutil.copy(controller.settings.tls_dir / CA_CERT_FILE, tls / "ca.crt")
    return AgentConfig(
        device_id="cam-1",
        data_dir=directory / "data",
        trust_root=directory / "trust-root.json",
        controller_url=f"https://127.0.0.1:{controller.port}",
        controller_token=enrollment.controller_token,
        tls_ca_file=tls / "ca.crt",
        tls_cert_file=tls / "device.crt",
        tls_key_file=tls / "device.key",
    )


def _certificates(controller: ServedController) -> list[DeviceCertificate]:
    with session_scope(controller.app.state.ctx.engine) as session:
        return list(
            session.exec(select(DeviceCertificate).order_by(col(DeviceCertificate.issued_at)))
        )


def test_renewal_installs_a_new_key_and_certificate_and_revokes_the_old_one(
    controller: ServedController, tmp_path: Path
) -> None:
    config = _enrolled_device(controller, tmp_path / "device")
    old_cert = config.tls_cert_file.read_bytes()  # type: ignore[union-attr]
    old_key = config.tls_key_file.read_bytes()  # type: ignore[union-attr]
    expiry = asyncio.run(renew_certificate(config))
    assert config.tls_cert_file.read_bytes() != old_cert  # type: ignore[union-attr]
    assert config.tls_key_file.read_bytes() != old_key  # type: ignore[union-attr]
    assert config.tls_key_file.stat().st_mode & 0o777 == 0o600  # type: ignore[union-attr]
    assert certificate_expiry(config) == expiry > datetime.now(UTC)
    # The new pair loads together, and the controller only honours the new certificate.
    pinned_ca_context.cache_clear()
    pinned_ca_context(config.tls_ca_file, config.tls_cert_file, config.tls_key_file)
    rows = _certificates(controller)
    assert [row.revoked_at is None for row in rows] == [False, True]
    # Operators see the live certificate on the device.
    shown = httpx.get(
        f"https://127.0.0.1:{controller.port}/api/v1/devices/cam-1",
        headers={"Authorization": f"Bearer {controller.token(Role.VIEWER)}"},
        verify=ssl.create_default_context(cafile=controller.settings.tls_dir / CA_CERT_FILE),
    ).json()["certificate"]
    assert shown["serial"] == rows[1].serial
    assert datetime.fromisoformat(shown["expires_at"]) == expiry


def test_a_decommissioned_device_gets_no_new_certificate(
    controller: ServedController, tmp_path: Path
) -> None:
    config = _enrolled_device(controller, tmp_path / "device")
    with session_scope(controller.app.state.ctx.engine) as session:
        decommission_device(session, device_id="cam-1")
    before = config.tls_cert_file.read_bytes()  # type: ignore[union-attr]
    with pytest.raises(HttpStatusError, match=r"401|403|404"):
        asyncio.run(renew_certificate(config))
    assert config.tls_cert_file.read_bytes() == before  # type: ignore[union-attr]


def test_an_operator_token_cannot_get_a_device_certificate(controller: ServedController) -> None:
    answer = httpx.post(
        f"https://127.0.0.1:{controller.port}/api/v1/device/certificate",
        json={"csr": DeviceKey.generate("x").csr_pem},
        headers={"Authorization": f"Bearer {controller.token(Role.OPERATOR)}"},
        verify=ssl.create_default_context(cafile=controller.settings.tls_dir / CA_CERT_FILE),
    )
    assert answer.status_code == 403, answer.text


# -- a renewal interrupted at each step ------------------------------------------------


def _staged_renewal(config: AgentConfig) -> tuple[bytes, bytes, bytes, bytes]:
    """The old pair installed and a new pair staged as .new files: (old cert, old key,
    new cert, new key)."""
    assert config.tls_cert_file is not None
    assert config.tls_key_file is not None
    old = config.tls_cert_file.read_bytes(), config.tls_key_file.read_bytes()
    ca_dir = config.tls_ca_file.parent.parent / "ca"  # type: ignore[union-attr]
    authority = init_ca(ca_dir, name="stand-in CA")
    key = DeviceKey.generate("cam-1")
    issued = authority.issue_device_certificate(key.csr_pem, "cam-1", now=datetime.now(UTC))
    new = issued.pem.encode(), key.private_pem
    config.tls_cert_file.with_name("device.crt.new").write_bytes(new[0])
    config.tls_key_file.with_name("device.key.new").write_bytes(new[1])
    return old[0], old[1], new[0], new[1]


def _device_files(tmp_path: Path) -> AgentConfig:
    authority = init_ca(tmp_path / "enrolling-ca", name="enrolling CA")
    key = DeviceKey.generate("cam-1")
    issued = authority.issue_device_certificate(key.csr_pem, "cam-1", now=datetime.now(UTC))
    tls = tmp_path / "device" / "tls"
    tls.mkdir(parents=True)
    (tls / "device.crt").write_text(issued.pem)
    (tls / "device.key").write_bytes(key.private_pem)
    (tls / "ca.crt").write_text(authority.pem)
    return AgentConfig(
        device_id="cam-1",
        data_dir=tmp_path / "device" / "data",
        trust_root=tmp_path / "device" / "trust-root.json",
        tls_ca_file=tls / "ca.crt",
        tls_cert_file=tls / "device.crt",
        tls_key_file=tls / "device.key",
    )


@pytest.mark.parametrize(
    ("crash_after", "installed"),
    [
        ("new key written", "old"),
        ("both written", "new"),
        ("key renamed", "new"),
    ],
)
def test_a_crashed_renewal_leaves_the_old_pair_or_the_new_one(
    tmp_path: Path, crash_after: str, installed: str
) -> None:
    config = _device_files(tmp_path)
    old_cert, old_key, new_cert, new_key = _staged_renewal(config)
    assert config.tls_cert_file is not None
    assert config.tls_key_file is not None
    staged_cert = config.tls_cert_file.with_name("device.crt.new")
    staged_key = config.tls_key_file.with_name("device.key.new")
    if crash_after == "new key written":
        staged_cert.unlink()
    elif crash_after == "key renamed":
        staged_key.replace(config.tls_key_file)
    finish_interrupted_renewal(config)
    expected = (old_cert, old_key) if installed == "old" else (new_cert, new_key)
    assert (config.tls_cert_file.read_bytes(), config.tls_key_file.read_bytes()) == expected
    assert not staged_cert.exists()
    assert not staged_key.exists()


def test_a_staged_certificate_for_another_key_is_discarded(tmp_path: Path) -> None:
    config = _device_files(tmp_path)
    old_cert, old_key, _new_cert, _new_key = _staged_renewal(config)
    assert config.tls_key_file is not None
    # A torn state no renewal writes: the staged certificate without its key.
    config.tls_key_file.with_name("device.key.new").unlink()
    finish_interrupted_renewal(config)
    assert config.tls_cert_file.read_bytes() == old_cert  # type: ignore[union-attr]
    assert config.tls_key_file.read_bytes() == old_key


# -- the daemon's schedule ---------------------------------------------------------------


async def _not_called(*_args: object) -> object:
    raise AssertionError("not called")


def _run_renewal_loop(config: AgentConfig, *, until_changed: bool, seconds: float) -> bytes:
    """Run the daemon's renewal task until the certificate file changes (or for
    ``seconds``); return the certificate then."""
    daemon = AgentDaemon(config, fetcher=_not_called, check_model=_not_called)  # type: ignore[arg-type]
    assert config.tls_cert_file is not None
    cert_file = config.tls_cert_file
    before = cert_file.read_bytes()

    async def scenario() -> bytes:
        task = asyncio.create_task(daemon._renew_certificate())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline and not (until_changed and cert_file.read_bytes() != before):
            await asyncio.sleep(0.05)
        task.cancel()
        return cert_file.read_bytes()

    try:
        return asyncio.run(scenario())
    finally:
        daemon.outbox.close()


def test_the_agent_renews_a_certificate_that_expires_within_a_month(
    controller: ServedController, tmp_path: Path
) -> None:
    config = _enrolled_device(controller, tmp_path / "device")
    before = config.tls_cert_file.read_bytes()  # type: ignore[union-attr]
    # The device's clock 800 days on: its 825-day certificate expires within the month.
    aged = config.model_copy(
        update={
            "clock_offset_s": 800 * 86400.0,
            "trust_root": controller.settings.keys_dir / "trust-root.json",
        }
    )
    after = _run_renewal_loop(aged, until_changed=True, seconds=30.0)
    assert after != before
    assert [row.revoked_at is None for row in _certificates(controller)] == [False, True]


def test_the_agent_keeps_a_certificate_far_from_expiry(
    controller: ServedController, tmp_path: Path
) -> None:
    config = _enrolled_device(controller, tmp_path / "device")
    before = config.tls_cert_file.read_bytes()  # type: ignore[union-attr]
    config = config.model_copy(
        update={"trust_root": controller.settings.keys_dir / "trust-root.json"}
    )
    assert _run_renewal_loop(config, until_changed=False, seconds=1.0) == before
    assert len(_certificates(controller)) == 1
