"""The certificate an enrollment answer carries is kept only if it is this device's."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.errors import ControllerCaMismatchError, EnrollmentAnswerError
from agent.link.device_identity import DeviceKey, verify_issued_certificate
from controller.ca import CertificateAuthority, init_ca

NOW = datetime.now(UTC)


@pytest.fixture
def authority(tmp_path: Path) -> CertificateAuthority:
    return init_ca(tmp_path / "ca", name="fleet CA")


def _verify(
    authority: CertificateAuthority,
    key: DeviceKey,
    certificate_pem: object,
    *,
    device_id: str = "cam-1",
    pinned: bytes | None = None,
    ca_pem: object = None,
) -> object:
    return verify_issued_certificate(
        key=key,
        device_id=device_id,
        certificate_pem=certificate_pem,
        ca_pem=authority.pem if ca_pem is None else ca_pem,
        pinned_ca_pem=pinned,
    )


def test_the_devices_own_certificate_from_the_pinned_ca_is_kept(
    authority: CertificateAuthority,
) -> None:
    key = DeviceKey.generate("cam-1")
    issued = authority.issue_device_certificate(key.csr_pem, "cam-1", now=NOW)
    identity = _verify(authority, key, issued.pem, pinned=authority.pem.encode())
    assert identity.certificate_pem == issued.pem.encode()  # type: ignore[attr-defined]


def test_a_certificate_for_another_key_is_refused(authority: CertificateAuthority) -> None:
    ours, theirs = DeviceKey.generate("cam-1"), DeviceKey.generate("cam-1")
    issued = authority.issue_device_certificate(theirs.csr_pem, "cam-1", now=NOW)
    with pytest.raises(ControllerCaMismatchError, match="key"):
        _verify(authority, ours, issued.pem)


def test_a_certificate_naming_another_device_is_refused(authority: CertificateAuthority) -> None:
    key = DeviceKey.generate("cam-1")
    issued = authority.issue_device_certificate(key.csr_pem, "cam-2", now=NOW)
    with pytest.raises(ControllerCaMismatchError, match="cam-2"):
        _verify(authority, key, issued.pem)


def test_a_ca_other_than_the_pinned_one_is_refused(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    """A man in the middle with its own CA answers with a certificate it made."""
    impostor = init_ca(tmp_path / "impostor", name="impostor CA")
    key = DeviceKey.generate("cam-1")
    issued = impostor.issue_device_certificate(key.csr_pem, "cam-1", now=NOW)
    with pytest.raises(ControllerCaMismatchError, match="pinned"):
        _verify(authority, key, issued.pem, ca_pem=impostor.pem, pinned=authority.pem.encode())


def test_a_certificate_the_named_ca_did_not_sign_is_refused(
    authority: CertificateAuthority, tmp_path: Path
) -> None:
    impostor = init_ca(tmp_path / "impostor", name="impostor CA")
    key = DeviceKey.generate("cam-1")
    issued = impostor.issue_device_certificate(key.csr_pem, "cam-1", now=NOW)
    with pytest.raises(ControllerCaMismatchError, match="signed"):
        _verify(authority, key, issued.pem)


@pytest.mark.parametrize("bad", [None, 7, "not pem", "-----BEGIN CERTIFICATE-----\nAA\n"])
def test_malformed_certificates_are_an_unusable_answer(
    authority: CertificateAuthority, bad: object
) -> None:
    with pytest.raises(EnrollmentAnswerError):
        _verify(authority, DeviceKey.generate("cam-1"), bad)


def test_the_private_key_stays_out_of_repr() -> None:
    key = DeviceKey.generate("cam-1")
    assert b"PRIVATE" in key.private_pem
    assert "PRIVATE" not in repr(key)
