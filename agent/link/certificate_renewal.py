"""Renewing the device's client certificate before it expires.

A certificate from enrollment lives about two years; a device in the field lives longer.
A month before it expires (``RENEW_BEFORE``) the agent makes a new key, sends its CSR
over HTTPS with its API token (``POST /api/v1/device/certificate``; not over MQTT, so a
device whose certificate lapsed can still renew) and installs the answer. The
controller revokes the older certificates when it issues the new one.

Installing two files is not atomic, so it is done in two steps that can be finished:
both new files are written beside the old ones (``device.key.new``, ``device.crt.new``),
then each is renamed over its old one. ``finish_interrupted_renewal`` runs at start:
it completes the renames only when the files left behind belong together (the new
certificate carries the new key, or the key already renamed), and deletes anything
else. So after a crash at any step the device has the old pair or the new one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from durable import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, write_atomic

from ..config import AgentConfig
from ..errors import ConfigurationError, EnrollmentAnswerError, HttpStatusError, LocalStateError
from ..tls import device_tls_context
from .capped_http import capped_request
from .device_identity import DeviceKey, verify_issued_certificate

__all__ = [
    "CHECK_INTERVAL_S",
    "RENEW_BEFORE",
    "RETRY_INTERVAL_S",
    "certificate_expiry",
    "finish_interrupted_renewal",
    "renew_certificate",
]

logger = logging.getLogger(__name__)

RENEW_BEFORE = timedelta(days=30)
CHECK_INTERVAL_S = 12 * 3600.0
RETRY_INTERVAL_S = 3600.0
RENEW_PATH = "/api/v1/device/certificate"
MAX_ANSWER_BYTES = 64 * 1024
TIMEOUT_S = 30.0
NEW_SUFFIX = ".new"


@dataclass(frozen=True)
class _Files:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def of(cls, config: AgentConfig) -> _Files:
        cert, key, ca = config.tls_cert_file, config.tls_key_file, config.tls_ca_file
        if cert is None or key is None or ca is None:
            raise ConfigurationError("renewing a certificate needs tls_cert_file, key and CA")
        return cls(cert, key, ca)

    def staged(self, path: Path) -> Path:
        return path.with_name(path.name + NEW_SUFFIX)


def _public_key_of_certificate(path: Path) -> bytes | None:
    try:
        key = x509.load_pem_x509_certificate(path.read_bytes()).public_key()
    except (OSError, ValueError):
        return None
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public_key_of_private(path: Path) -> bytes | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except (OSError, ValueError, TypeError):
        return None
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def finish_interrupted_renewal(config: AgentConfig) -> None:
    """Complete or discard a renewal a crash interrupted (see the module's docstring)."""
    if config.tls_cert_file is None:
        return
    files = _Files.of(config)
    new_cert, new_key = files.staged(files.cert), files.staged(files.key)
    if not new_cert.exists():
        # The certificate is renamed last: without it there is nothing to finish.
        new_key.unlink(missing_ok=True)
        return
    certified = _public_key_of_certificate(new_cert)
    try:
        if certified is not None and certified == _public_key_of_private(new_key):
            os.replace(new_key, files.key)
        if certified is not None and certified == _public_key_of_private(files.key):
            os.replace(new_cert, files.cert)
            logger.info("finished installing a renewed client certificate")
    except OSError as exc:
        raise LocalStateError(f"cannot finish the certificate renewal: {exc}") from exc
    new_cert.unlink(missing_ok=True)
    new_key.unlink(missing_ok=True)


def certificate_expiry(config: AgentConfig) -> datetime | None:
    """When the device's client certificate expires; None without one (or unreadable)."""
    if config.tls_cert_file is None:
        return None
    try:
        certificate = x509.load_pem_x509_certificate(config.tls_cert_file.read_bytes())
    except (OSError, ValueError):
        return None
    return certificate.not_valid_after_utc


async def renew_certificate(config: AgentConfig) -> datetime:
    """Get a new certificate for a new key and install both; return its expiry.

    Raises a ``TransportError`` when the controller cannot be reached, an
    ``HttpStatusError``/``EnrollmentAnswerError`` for a refusal or an unusable answer
    (the certificate is checked as at enrollment: this device's key and id, the pinned
    CA), ``LocalStateError`` when the files cannot be written.
    """
    files = _Files.of(config)
    key = DeviceKey.generate(config.device_id)
    answer = await _ask(config, key.csr_pem)
    pinned = files.ca.read_bytes()
    identity = verify_issued_certificate(
        key=key,
        device_id=config.device_id,
        certificate_pem=answer.get("certificate"),
        ca_pem=answer.get("ca_certificate"),
        pinned_ca_pem=pinned,
    )
    try:
        write_atomic(files.staged(files.key), identity.private_key_pem, mode=PRIVATE_FILE_MODE)
        write_atomic(files.staged(files.cert), identity.certificate_pem, mode=PUBLIC_FILE_MODE)
        os.replace(files.staged(files.key), files.key)
        os.replace(files.staged(files.cert), files.cert)
    except OSError as exc:
        raise LocalStateError(f"cannot install the renewed certificate: {exc}") from exc
    expiry = certificate_expiry(config)
    assert expiry is not None
    return expiry


async def _ask(config: AgentConfig, csr: str) -> dict[str, object]:
    url = config.controller_url.rstrip("/") + RENEW_PATH
    status, body = await asyncio.to_thread(
        capped_request,
        "POST",
        url,
        verify=device_tls_context(config),
        max_bytes=MAX_ANSWER_BYTES,
        timeout_s=TIMEOUT_S,
        too_large=EnrollmentAnswerError,
        json={"csr": csr},
        headers={"Authorization": f"Bearer {config.controller_token}"},
    )
    if status != 200:
        detail = body[:300].decode("utf-8", "replace")
        raise HttpStatusError(f"{url} answered {status}: {detail}", status=status)
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise EnrollmentAnswerError(f"{url} did not answer JSON: {exc}") from exc
    if not isinstance(answer, dict):
        raise EnrollmentAnswerError(f"{url} did not answer a JSON object")
    return answer
