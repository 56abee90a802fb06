"""The device's TLS identity at enrollment: its own key, a CSR, the certificate it gets back.

The private key is made here, on the device, and never sent: the controller sees only
the certificate request (proof that the device holds the key) and answers with a client
certificate naming the device and the CA that issued it.

Before the token is sent over HTTPS the device must trust the controller. Its CA is
self-made, so the system's CAs do not know it; the device is given it out of band, as
a file (``--ca-file``) or as the SHA-256 of its DER (``--ca-sha256``, printed by
``edgefleet devices enroll``). With a hash, the device fetches ``/api/v1/ca.pem``
without checking the server (nothing secret is sent), keeps it only if the hash matches,
and then sends its token over a connection that trusts that CA alone.

Invariants:
- an issued certificate is accepted only if it carries this device's public key, names
  the enrolled device id, and is signed by the CA: the pinned one when there is a pin;
- nothing is written here: ``enroll.persist_enrollment`` writes the key (0600) with the
  rest of the enrollment, so a refused answer leaves no key behind.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..errors import ConfigurationError, ControllerCaMismatchError, EnrollmentAnswerError
from .capped_http import capped_request

__all__ = [
    "CA_PATH",
    "CaPin",
    "DeviceKey",
    "IssuedIdentity",
    "fetch_pinned_ca",
    "verify_issued_certificate",
]

CA_PATH = "/api/v1/ca.pem"
MAX_CA_BYTES = 64 * 1024


@dataclass(frozen=True)
class CaPin:
    """The controller's CA as the device knows it before enrolling: a PEM file's bytes, or
    the SHA-256 of the certificate's DER (hexadecimal, colons allowed)."""

    pem: bytes | None = None
    sha256: str | None = None

    @classmethod
    def from_file(cls, path: Path) -> CaPin:
        try:
            pem = path.read_bytes()
            x509.load_pem_x509_certificate(pem)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot read the CA certificate {path}: {exc}") from exc
        return cls(pem=pem)

    @property
    def normalized_sha256(self) -> str | None:
        return None if self.sha256 is None else self.sha256.replace(":", "").lower()


@dataclass(frozen=True)
class DeviceKey:
    """A new P-256 key pair and its CSR; the key stays in memory until it is persisted."""

    private_pem: bytes = field(repr=False)
    csr_pem: str
    public_der: bytes

    @classmethod
    def generate(cls, common_name: str) -> DeviceKey:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .sign(key, hashes.SHA256())
        )
        return cls(
            private_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            public_der=_public_der(key.public_key()),
        )


@dataclass(frozen=True)
class IssuedIdentity:
    """What ``tls/`` will hold: the device's key, its certificate and the CA."""

    private_key_pem: bytes = field(repr=False)
    certificate_pem: bytes
    ca_pem: bytes


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _der_sha256(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def fetch_pinned_ca(controller_url: str, pin: CaPin, *, timeout_s: float) -> bytes:
    """The CA's PEM: the pinned file's, or the controller's if its SHA-256 is the pin."""
    if pin.pem is not None:
        return pin.pem
    url = controller_url.rstrip("/") + CA_PATH
    # Not verified on purpose: the answer is checked against the pin below, and nothing
    # secret goes out on this connection.
    status, body = capped_request(
        "GET",
        url,
        verify=False,
        max_bytes=MAX_CA_BYTES,
        timeout_s=timeout_s,
        too_large=ControllerCaMismatchError,
    )
    if status != 200:
        raise ControllerCaMismatchError(
            f"{url} answered {status}: the controller has no CA (is TLS on?)"
        )
    try:
        certificate = x509.load_pem_x509_certificate(body)
    except ValueError as exc:
        raise ControllerCaMismatchError(f"{url} is not a PEM certificate: {exc}") from exc
    served = _der_sha256(certificate)
    if served != pin.normalized_sha256:
        raise ControllerCaMismatchError(
            f"the controller's CA has SHA-256 {served}, not the expected "
            f"{pin.normalized_sha256}: refusing it (is this the right controller?)"
        )
    return body


def ca_context(ca_pem: bytes) -> ssl.SSLContext:
    """A context that trusts ``ca_pem`` alone."""
    return ssl.create_default_context(cadata=ca_pem.decode("ascii", "replace"))


def verify_issued_certificate(
    *,
    key: DeviceKey,
    device_id: str,
    certificate_pem: object,
    ca_pem: object,
    pinned_ca_pem: bytes | None,
) -> IssuedIdentity:
    """Check the certificate the controller issued; ``ControllerCaMismatchError`` or
    ``EnrollmentAnswerError`` unless it is this device's, from the (pinned) CA."""
    if not isinstance(certificate_pem, str) or not isinstance(ca_pem, str):
        raise EnrollmentAnswerError("the enrollment answer's certificates are not PEM text")
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
        ca = x509.load_pem_x509_certificate(ca_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise EnrollmentAnswerError(f"the enrollment answer's certificates: {exc}") from exc
    if pinned_ca_pem is not None:
        pinned = x509.load_pem_x509_certificate(pinned_ca_pem)
        if _der_sha256(pinned) != _der_sha256(ca):
            raise ControllerCaMismatchError("the answer names another CA than the pinned one")
    if _public_der(certificate.public_key()) != key.public_der:
        raise ControllerCaMismatchError("the issued certificate is not for this device's key")
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [str(name.value) for name in names] != [device_id]:
        raise ControllerCaMismatchError(
            f"the issued certificate names {certificate.subject.rfc4514_string()}, not {device_id}"
        )
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ControllerCaMismatchError(
            f"the issued certificate is not signed by the CA: {exc}"
        ) from exc
    return IssuedIdentity(
        private_key_pem=key.private_pem,
        certificate_pem=certificate_pem.encode("ascii"),
        ca_pem=ca_pem.encode("ascii"),
    )
