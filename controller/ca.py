"""The controller's certificate authority: TLS for the API and the broker, device identities.

``edgefleet ca init`` makes a CA (or imports the operator's) into ``<data_dir>/tls``:

- ``ca.crt``/``ca.key``: the CA. It signs the server certificate and one client
  certificate per device, issued at enrollment from the device's CSR: the device's private
  key never leaves the device;
- ``server.crt``/``server.key``: HTTPS for the API and dashboard, TLS for the embedded
  broker's listener and for Mosquitto's; its names are the hosts devices reach;
- ``controller-client.crt``/``.key``: the controller's own MQTT client, for a broker that
  asks every client for a certificate (Mosquitto with ``require_certificate``).

Invariants:
- a device certificate names exactly one device: its subject common name is the device
  id, its only extended key usage is client authentication, and it is issued only for a
  public key whose CSR signature proves the requester holds the private key;
- serial numbers are random 159-bit integers (RFC 5280 §4.1.2.2), unique in practice;
- every private key file is written mode 0600 through ``write_atomic``; the CA key is
  encrypted when ``EDGEFLEET_CA_KEY_PASSPHRASE`` is set;
- the server and controller-client certificates are re-issued by ``ensure_service_certificates``
  when they are missing, expire within ``RENEW_BEFORE``, or do not name the configured
  hosts; the CA itself is never replaced implicitly.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from durable import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, write_atomic

from .errors import BadRequestError, ConfigError
from .settings import Settings

__all__ = [
    "CA_CERT_FILE",
    "CA_LIFETIME",
    "DEVICE_CERT_LIFETIME",
    "MAX_CSR_BYTES",
    "RENEW_BEFORE",
    "CertificateAuthority",
    "IssuedCertificate",
    "certificate_sha256",
    "init_ca",
]

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.crt"
SERVER_KEY_FILE = "server.key"
CONTROLLER_CLIENT_CERT_FILE = "controller-client.crt"
CONTROLLER_CLIENT_KEY_FILE = "controller-client.key"
CA_PASSPHRASE_ENV = "EDGEFLEET_CA_KEY_PASSPHRASE"  # noqa: S105 - a variable name

CA_LIFETIME = timedelta(days=3650)
SERVER_CERT_LIFETIME = timedelta(days=397)
DEVICE_CERT_LIFETIME = timedelta(days=825)
RENEW_BEFORE = timedelta(days=30)
# Clocks of devices and brokers drift: a certificate is valid from a little before now.
_BACKDATE = timedelta(minutes=10)
MAX_CSR_BYTES = 8 * 1024
_MIN_RSA_BITS = 2048
_CURVES = (ec.SECP256R1, ec.SECP384R1)

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class IssuedCertificate:
    pem: str
    serial: str  # hexadecimal, as openssl prints it
    sha256: str  # of the DER encoding: what a TLS peer presents
    not_after: datetime


def certificate_sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: every TLS stack on devices and brokers (Mosquitto, Python, mbedTLS) has it.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _serial() -> int:
    return secrets.randbits(159) | 1


def _host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _issued(cert: x509.Certificate) -> IssuedCertificate:
    return IssuedCertificate(
        pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        serial=format(cert.serial_number, "x"),
        sha256=certificate_sha256(cert.public_bytes(serialization.Encoding.DER)),
        not_after=cert.not_valid_after_utc,
    )


def _verify_public_key(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise BadRequestError(f"the CSR's key is on curve {key.curve.name}: use P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise BadRequestError(
                f"the CSR's RSA key has {key.key_size} bits, under {_MIN_RSA_BITS}"
            )
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise BadRequestError("the CSR's key is not ECDSA P-256/P-384, Ed25519 or RSA")


def _signature_hash(key: PrivateKey) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


class CertificateAuthority:
    """The CA of ``tls_dir``: issues device and service certificates."""

    def __init__(self, tls_dir: Path, certificate: x509.Certificate, key: PrivateKey) -> None:
        self.tls_dir = tls_dir
        self.certificate = certificate
        self._key = key

    @classmethod
    def load(cls, tls_dir: Path, passphrase: bytes | None = None) -> CertificateAuthority:
        """Read ``ca.crt``/``ca.key``; ``ConfigError`` when missing or unreadable."""
        try:
            certificate = x509.load_pem_x509_certificate((tls_dir / CA_CERT_FILE).read_bytes())
            key = serialization.load_pem_private_key(
                (tls_dir / CA_KEY_FILE).read_bytes(), passphrase or None
            )
        except FileNotFoundError as exc:
            raise ConfigError(
                f"no certificate authority in {tls_dir}: run `edgefleet ca init` first"
            ) from exc
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"cannot read the certificate authority in {tls_dir}: {exc} "
                f"(is {CA_PASSPHRASE_ENV} right?)"
            ) from exc
        if not isinstance(key, PrivateKey):
            raise ConfigError(f"{tls_dir / CA_KEY_FILE} is not an EC, Ed25519 or RSA key")
        return cls(tls_dir, certificate, key)

    @property
    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def sha256(self) -> str:
        """SHA-256 of the CA certificate's DER: the pin ``edgefleet-agent enroll --ca-sha256``
        takes (``openssl x509 -noout -fingerprint -sha256`` prints it with colons)."""
        return certificate_sha256(self.certificate.public_bytes(serialization.Encoding.DER))

    def _builder(
        self, subject: str, public_key: object, now: datetime, lifetime: timedelta
    ) -> x509.CertificateBuilder:
        not_after = min(now + lifetime, self.certificate.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(_serial())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.certificate.public_key()  # type: ignore[arg-type]
                ),
                critical=False,
            )
        )

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self._key, _signature_hash(self._key))  # type: ignore[arg-type]

    def issue_device_certificate(
        self,
        csr_pem: str,
        device_id: str,
        *,
        now: datetime,
        lifetime: timedelta = DEVICE_CERT_LIFETIME,
    ) -> IssuedCertificate:
        """A client certificate for ``device_id`` over the CSR's public key.

        Only the CSR's key is used (its subject and extensions are ignored: the controller
        decides the name). ``BadRequestError`` for a malformed CSR, a signature that does
        not verify (the requester does not hold the key) or a weak key.
        """
        data = csr_pem.encode("utf-8", "replace")
        if len(data) > MAX_CSR_BYTES:
            raise BadRequestError(f"the CSR is over {MAX_CSR_BYTES} bytes")
        try:
            csr = x509.load_pem_x509_csr(data)
            public_key = csr.public_key()
        except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
            raise BadRequestError(f"the CSR is not a PEM certificate request: {exc}") from exc
        try:
            valid = csr.is_signature_valid
        except (ValueError, TypeError, InvalidSignature):
            valid = False
        if not valid:
            raise BadRequestError("the CSR's signature does not verify with its own key")
        _verify_public_key(public_key)
        builder = self._builder(device_id, public_key, now, lifetime).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return _issued(self._sign(builder))

    def issue_server_certificate(
        self, hosts: Sequence[str], *, now: datetime, lifetime: timedelta = SERVER_CERT_LIFETIME
    ) -> tuple[IssuedCertificate, bytes]:
        """A server certificate (and its new private key, PEM) naming ``hosts``."""
        key = _new_key()
        builder = (
            self._builder(hosts[0], key.public_key(), now, lifetime)
            .add_extension(x509.SubjectAlternativeName(_host_names(hosts)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        return _issued(self._sign(builder)), _key_pem(key)

    def issue_client_certificate(
        self, name: str, *, now: datetime, lifetime: timedelta = SERVER_CERT_LIFETIME
    ) -> tuple[IssuedCertificate, bytes]:
        """A client certificate (and its new private key) with common name ``name``."""
        key = _new_key()
        builder = self._builder(name, key.public_key(), now, lifetime).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return _issued(self._sign(builder)), _key_pem(key)

    def revocation_list(
        self, revoked: Iterable[tuple[str, datetime]], *, now: datetime, next_update: timedelta
    ) -> bytes:
        """A CRL (PEM) of the ``(serial hex, revoked at)`` pairs, for Mosquitto's ``crlfile``."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - _BACKDATE)
            .next_update(now + next_update)
        )
        for serial, revoked_at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(revoked_at)
                .build()
            )
        crl = builder.sign(self._key, _signature_hash(self._key))  # type: ignore[arg-type]
        return crl.public_bytes(serialization.Encoding.PEM)

    def ensure_service_certificates(
        self, hosts: Sequence[str], controller_name: str, *, now: datetime
    ) -> bool:
        """(Re-)issue ``server.crt`` and ``controller-client.crt`` when missing, close to
        expiry or (the server's) not naming ``hosts``. True when anything was written.

        A re-issued server certificate keeps the names the old one had besides ``hosts``:
        ``ca init --host`` names are not settings, and ``serve`` (which passes the
        settings' names) must not drop them. Remove the file to drop a name."""
        changed = False
        server = _read_certificate(self.tls_dir / SERVER_CERT_FILE)
        if server is None or _needs_renewal(server, now) or not _names_all(server, hosts):
            kept = [] if server is None else _host_strings(server)
            issued, key = self.issue_server_certificate([*hosts, *kept], now=now)
            self._write_pair(SERVER_CERT_FILE, SERVER_KEY_FILE, issued, key)
            changed = True
        client = _read_certificate(self.tls_dir / CONTROLLER_CLIENT_CERT_FILE)
        if client is None or _needs_renewal(client, now) or _common_name(client) != controller_name:
            issued, key = self.issue_client_certificate(controller_name, now=now)
            self._write_pair(CONTROLLER_CLIENT_CERT_FILE, CONTROLLER_CLIENT_KEY_FILE, issued, key)
            changed = True
        return changed

    def _write_pair(
        self, cert_file: str, key_file: str, issued: IssuedCertificate, key: bytes
    ) -> None:
        # The key first: a certificate on disk always has its key beside it.
        write_atomic(self.tls_dir / key_file, key, mode=PRIVATE_FILE_MODE)
        write_atomic(self.tls_dir / cert_file, issued.pem.encode("ascii"), mode=PUBLIC_FILE_MODE)


def _read_certificate(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _needs_renewal(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_after_utc - now < RENEW_BEFORE


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _host_strings(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate's subjectAltName holds, as text."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    addresses = [str(address) for address in san.get_values_for_type(x509.IPAddress)]
    return [*san.get_values_for_type(x509.DNSName), *addresses]


def _names_all(cert: x509.Certificate, hosts: Sequence[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(_host_names(hosts)) <= set(san)


def init_ca(
    tls_dir: Path,
    *,
    name: str,
    now: datetime | None = None,
    import_certificate: Path | None = None,
    import_key: Path | None = None,
    passphrase: bytes | None = None,
) -> CertificateAuthority:
    """Create ``tls_dir``'s CA, or import the operator's (a CA certificate and its key).

    Refuses to replace an existing CA: devices pin it at enrollment.
    """
    now = now or datetime.now(UTC)
    if (tls_dir / CA_CERT_FILE).exists():
        raise ConfigError(
            f"{tls_dir / CA_CERT_FILE} exists: devices trust it; a new CA would cut them off"
        )
    if (import_certificate is None) != (import_key is None):
        raise ConfigError("importing a CA needs both its certificate and its key")
    if import_certificate is not None and import_key is not None:
        try:
            certificate = x509.load_pem_x509_certificate(import_certificate.read_bytes())
            key = serialization.load_pem_private_key(import_key.read_bytes(), passphrase or None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the CA to import: {exc}") from exc
        if not isinstance(key, PrivateKey):
            raise ConfigError(f"{import_key} is not an EC, Ed25519 or RSA key")
        if certificate.public_key() != key.public_key():
            raise ConfigError(f"{import_key} is not the key of {import_certificate}")
        _verify_is_ca(certificate)
    else:
        key = _new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(tls_dir / CA_KEY_FILE, _key_pem(key, passphrase), mode=PRIVATE_FILE_MODE)
    write_atomic(
        tls_dir / CA_CERT_FILE,
        certificate.public_bytes(serialization.Encoding.PEM),
        mode=PUBLIC_FILE_MODE,
    )
    return CertificateAuthority(tls_dir, certificate, key)


def _verify_is_ca(certificate: x509.Certificate) -> None:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise ConfigError("the certificate to import is not a CA certificate (basicConstraints)")


def server_certificate_files(settings: Settings) -> tuple[Path, Path]:
    """(certificate, key) for HTTPS and the broker's TLS listener, issued by the CA (an
    operator's CA is imported with ``edgefleet ca init --import-cert``)."""
    return settings.tls_dir / SERVER_CERT_FILE, settings.tls_dir / SERVER_KEY_FILE


def controller_client_files(settings: Settings) -> tuple[Path, Path]:
    """(certificate, key) of the controller's own MQTT client."""
    return (
        settings.tls_dir / CONTROLLER_CLIENT_CERT_FILE,
        settings.tls_dir / CONTROLLER_CLIENT_KEY_FILE,
    )


def load_authority(
    settings: Settings, environ: Mapping[str, str] | None = None, *, now: datetime | None = None
) -> CertificateAuthority | None:
    """With ``settings.tls``: the CA of the data directory, its service certificates
    renewed when due; None with TLS off. ``ConfigError`` when TLS is on and there is no CA."""
    if not settings.tls:
        return None
    env = os.environ if environ is None else environ
    passphrase = env.get(CA_PASSPHRASE_ENV, "").encode() or None
    authority = CertificateAuthority.load(settings.tls_dir, passphrase)
    authority.ensure_service_certificates(
        settings.server_tls_hosts, settings.controller_mqtt_username, now=now or datetime.now(UTC)
    )
    return authority
