"""The controller's certificate authority: what it makes, imports, issues and refuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.link.device_identity import DeviceKey
from controller.ca import (
    CA_KEY_FILE,
    SERVER_CERT_FILE,
    SERVER_KEY_FILE,
    CertificateAuthority,
    init_ca,
    load_authority,
)
from controller.errors import BadRequestError, ConfigError
from controller.settings import load_settings

NOW = datetime(2026, 12, 4, tzinfo=UTC)


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, name: str = "x") -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_init_writes_a_ca_with_a_private_key_and_refuses_to_replace_it(tmp_path: Path) -> None:
    authority = init_ca(tmp_path / "tls", name="test CA", now=NOW)
    assert (tmp_path / "tls" / CA_KEY_FILE).stat().st_mode & 0o777 == 0o600
    constraints = authority.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca
    with pytest.raises(ConfigError, match="exists"):
        init_ca(tmp_path / "tls", name="again", now=NOW)


def test_an_encrypted_ca_key_needs_its_passphrase(tmp_path: Path) -> None:
    init_ca(tmp_path, name="test CA", now=NOW, passphrase=b"secret")
    assert b"ENCRYPTED" in (tmp_path / CA_KEY_FILE).read_bytes()
    CertificateAuthority.load(tmp_path, b"secret")
    with pytest.raises(ConfigError, match="EDGEFLEET_CA_KEY_PASSPHRASE"):
        CertificateAuthority.load(tmp_path, b"wrong")


def test_a_device_certificate_names_the_device_for_client_auth_only(tmp_path: Path) -> None:
    authority = init_ca(tmp_path, name="test CA", now=NOW)
    key = DeviceKey.generate("what-the-device-asked")
    issued = authority.issue_device_certificate(key.csr_pem, "cam-1", now=NOW)
    certificate = x509.load_pem_x509_certificate(issued.pem.encode())
    # The controller decides the name, not the CSR.
    assert certificate.subject.rfc4514_string() == "CN=cam-1"
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate.verify_directly_issued_by(authority.certificate)
    assert issued.serial == format(certificate.serial_number, "x")
    assert certificate.not_valid_after_utc == issued.not_after


@pytest.mark.parametrize(
    ("make_key", "problem"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "1024 bits"),
        (lambda: ec.generate_private_key(ec.SECP521R1()), "curve"),
    ],
    ids=["rsa-1024", "p-521"],
)
def test_weak_or_unexpected_keys_get_no_certificate(
    tmp_path: Path, make_key: object, problem: str
) -> None:
    authority = init_ca(tmp_path, name="test CA", now=NOW)
    with pytest.raises(BadRequestError, match=problem):
        authority.issue_device_certificate(_csr(make_key()), "cam-1", now=NOW)  # type: ignore[operator]


@pytest.mark.parametrize(
    "csr",
    [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "x" * 9000,
    ],
    ids=["empty", "text", "bad-der", "oversized"],
)
def test_malformed_certificate_requests_are_a_bad_request(tmp_path: Path, csr: str) -> None:
    authority = init_ca(tmp_path, name="test CA", now=NOW)
    with pytest.raises(BadRequestError):
        authority.issue_device_certificate(csr, "cam-1", now=NOW)


def test_service_certificates_are_renewed_when_due_or_when_the_names_change(
    tmp_path: Path,
) -> None:
    authority = init_ca(tmp_path, name="test CA", now=NOW)
    assert authority.ensure_service_certificates(["fleet.example", "127.0.0.1"], "ctl", now=NOW)
    assert (tmp_path / SERVER_KEY_FILE).stat().st_mode & 0o777 == 0o600
    first = (tmp_path / SERVER_CERT_FILE).read_bytes()
    assert not authority.ensure_service_certificates(["fleet.example"], "ctl", now=NOW)
    assert authority.ensure_service_certificates(["fleet.example", "mqtt.example"], "ctl", now=NOW)
    second = (tmp_path / SERVER_CERT_FILE).read_bytes()
    assert second != first
    certificate = x509.load_pem_x509_certificate(second)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fleet.example", "mqtt.example"]
    later = certificate.not_valid_after_utc - timedelta(days=10)
    assert authority.ensure_service_certificates(
        ["fleet.example", "mqtt.example"], "ctl", now=later
    )


def test_a_renewed_server_certificate_keeps_the_names_ca_init_was_given(
    tmp_path: Path,
) -> None:
    # `ca init --host fleet.example`, then `serve` with the settings' default names.
    authority = init_ca(tmp_path, name="test CA", now=NOW)
    authority.ensure_service_certificates(["fleet.example"], "ctl", now=NOW)
    assert authority.ensure_service_certificates(["127.0.0.1", "localhost"], "ctl", now=NOW)
    certificate = x509.load_pem_x509_certificate((tmp_path / SERVER_CERT_FILE).read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "fleet.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_an_operators_ca_is_imported_and_must_be_a_ca_with_its_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corp Root")])

    def certificate(is_ca: bool) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(7)
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )

    key_file = tmp_path / "corp.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for is_ca in (False, True):
        cert_file = tmp_path / f"corp-{is_ca}.crt"
        cert_file.write_bytes(certificate(is_ca).public_bytes(serialization.Encoding.PEM))
    other_key = tmp_path / "other.key"
    other_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="not a CA"):
        init_ca(
            tmp_path / "a",
            name="x",
            import_certificate=tmp_path / "corp-False.crt",
            import_key=key_file,
        )
    with pytest.raises(ConfigError, match="not the key"):
        init_ca(
            tmp_path / "b",
            name="x",
            import_certificate=tmp_path / "corp-True.crt",
            import_key=other_key,
        )
    authority = init_ca(
        tmp_path / "c", name="x", import_certificate=tmp_path / "corp-True.crt", import_key=key_file
    )
    issued = authority.issue_device_certificate(DeviceKey.generate("d").csr_pem, "cam-1", now=NOW)
    x509.load_pem_x509_certificate(issued.pem.encode()).verify_directly_issued_by(
        authority.certificate
    )


def test_the_revocation_list_names_the_revoked_serials(tmp_path: Path) -> None:
    authority = init_ca(tmp_path, name="test CA", now=NOW)
    issued = authority.issue_device_certificate(DeviceKey.generate("d").csr_pem, "cam-1", now=NOW)
    crl = x509.load_pem_x509_crl(
        authority.revocation_list([(issued.serial, NOW)], now=NOW, next_update=timedelta(days=7))
    )
    assert crl.is_signature_valid(authority.certificate.public_key())  # type: ignore[arg-type]
    revoked = crl.get_revoked_certificate_by_serial_number(int(issued.serial, 16))
    assert revoked is not None


def test_tls_on_without_a_ca_is_a_clear_configuration_error(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path, "tls": True})
    with pytest.raises(ConfigError, match="edgefleet ca init"):
        load_authority(settings, environ={})
    assert load_authority(settings.model_copy(update={"tls": False}), environ={}) is None
