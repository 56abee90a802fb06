"""Device identities: one-time enrollment tokens, enrollment, and decommissioning.

An operator creates an enrollment token (``et_<id>_<secret>``, stored as the SHA-256 of
the secret, like API tokens); the device trades it once for its identity: a device id,
MQTT credentials, an API token of role ``device`` and the trust root.

Invariants:
- a token enrolls at most one device: it is consumed by ``UPDATE … WHERE used_at IS NULL``
  and only the transaction that changed the row goes on, so of two concurrent
  enrollments with one token exactly one wins (the other waits for the row lock on
  PostgreSQL, or for the database lock on SQLite, then sees the token used);
- an unknown, malformed, wrong, expired or used token gets one and the same refusal, and
  the token is checked before anything about device ids is revealed;
- secrets leave only in the answer: the MQTT password is stored as its ``$7$`` hash,
  the API token as the hash of its secret;
- a device id is enrolled at most once at a time. A decommissioned id may enroll again:
  its row is reset (new labels, new credentials, no reported or desired state, its old
  ``device_events`` deleted because the new agent numbers its events from 1 again) but
  its deployment and command sequences keep growing, so nothing signed for the old
  enrollment can be replayed as newer;
- device ids starting with ``edgefleet-controller`` are reserved for the controller's
  own MQTT clients, and no device may be called like ``settings.mqtt_username``;
- with a certificate authority, a device that sends a CSR gets a client certificate
  naming it (``controller.ca``); enrolling again and decommissioning revoke every
  certificate the device had. With ``device_password_login`` off, a CSR is required.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from protocol import Envelope, ProtocolError, verify_device_id

from ..ca import CertificateAuthority, IssuedCertificate
from ..errors import BadRequestError, ConflictError, EnrollmentRefusedError, NotFoundError
from ..settings import Settings
from ..tables import ApiToken, utcnow
from ..tokens import Role, create_token
from .credentials import generate_mqtt_password, hash_mqtt_password, hash_nats_password
from .desired import clear_desired
from .selectors import verify_labels
from .tables import (
    DeviceCertificate,
    DeviceEventRecord,
    DeviceModelRecord,
    DeviceRecord,
    EnrollmentToken,
)

__all__ = [
    "ENROLLMENT_TOKEN_PREFIX",
    "MAX_ENROLLMENT_TOKEN_TTL_S",
    "RESERVED_DEVICE_ID_PREFIX",
    "Enrollment",
    "create_enrollment_token",
    "decommission_device",
    "device_of_token",
    "enroll_device",
    "renew_device_certificate",
    "verify_new_device_id",
]

ENROLLMENT_TOKEN_PREFIX = "et"  # noqa: S105 - a prefix, not a secret
MAX_ENROLLMENT_TOKEN_TTL_S = 365 * 86400.0
RESERVED_DEVICE_ID_PREFIX = "edgefleet-controller"
REFUSAL = EnrollmentRefusedError.MESSAGE
_NO_SECRET_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Enrollment:
    """Everything a device needs, handed out once: it holds secrets, never log it."""

    device_id: str
    labels: dict[str, str]
    mqtt_username: str
    mqtt_password: str = field(repr=False)
    broker_url: str
    topic_prefix: str
    controller_url: str
    controller_token: str = field(repr=False)
    trust_root: dict[str, Any] = field(repr=False)
    token_id: str
    reenrolled: bool
    # PEM, when the controller has a CA and the device sent a CSR.
    client_certificate: str | None = None
    ca_certificate: str | None = None

    def public_fields(self) -> dict[str, Any]:
        """The answer to the device (the fields of ``EnrollmentPublic``)."""
        return {
            "client_certificate": self.client_certificate,
            "ca_certificate": self.ca_certificate,
            "device_id": self.device_id,
            "labels": dict(self.labels),
            "mqtt_username": self.mqtt_username,
            "mqtt_password": self.mqtt_password,
            "broker_url": self.broker_url,
            "topic_prefix": self.topic_prefix,
            "controller_url": self.controller_url,
            "controller_token": self.controller_token,
            "trust_root": self.trust_root,
        }


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC).
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def verify_new_device_id(device_id: str, settings: Settings | None = None) -> str:
    """Return ``device_id`` if a device may be given it, else raise ``BadRequestError``."""
    try:
        verify_device_id(device_id)
    except ProtocolError as exc:
        raise BadRequestError(str(exc)) from exc
    if device_id.lower().startswith(RESERVED_DEVICE_ID_PREFIX) or (
        settings is not None and settings.mqtt_username and device_id == settings.mqtt_username
    ):
        raise BadRequestError(
            f"device id {device_id!r} is reserved for the controller's MQTT clients"
        )
    return device_id


def create_enrollment_token(
    session: Session,
    *,
    labels: Mapping[str, str],
    device_id: str | None,
    ttl_s: float,
    actor: str,
    settings: Settings | None = None,
) -> tuple[str, EnrollmentToken]:
    """Store a one-time token; return it in clear (the only time) and its row.

    Refuses invalid labels, an invalid or reserved device id, a device id that is
    enrolled now, and a TTL outside (0, ``MAX_ENROLLMENT_TOKEN_TTL_S``].
    """
    verify_labels(labels)
    if device_id is not None:
        verify_new_device_id(device_id, settings)
        _refuse_enrolled(session, device_id)
    if not 0 < ttl_s <= MAX_ENROLLMENT_TOKEN_TTL_S:
        raise BadRequestError(
            f"an enrollment token lives more than 0 and at most {MAX_ENROLLMENT_TOKEN_TTL_S:.0f} "
            f"s, not {ttl_s}"
        )
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = EnrollmentToken(
        id=token_id,
        secret_sha256=_sha256(secret),
        labels=dict(labels),
        device_id=device_id,
        expires_at=utcnow() + timedelta(seconds=ttl_s),
        created_by=actor,
    )
    session.add(row)
    session.flush()
    return f"{ENROLLMENT_TOKEN_PREFIX}_{token_id}_{secret}", row


def enroll_device(
    session: Session,
    *,
    token: str,
    device_id: str | None,
    settings: Settings,
    trust_root_envelope: Envelope,
    csr: str | None = None,
    authority: CertificateAuthority | None = None,
) -> Enrollment:
    """Consume ``token`` and create (or re-create) the device it enrolls.

    The device id is the token's; else ``device_id`` as the device proposes it; else a
    generated ``dev-<12 hex>``. Raises ``EnrollmentRefusedError`` for any token problem,
    ``ConflictError`` when the id is enrolled now or differs from the token's, and
    ``BadRequestError`` for an invalid or reserved proposed id, a bad CSR, or no CSR when
    devices must log in with a certificate.
    """
    row = _check_token(session, token)
    chosen = _choose_device_id(row, device_id, settings)
    if authority is not None and csr is None and not settings.device_password_login:
        raise BadRequestError(
            "this controller admits devices by certificate only: enroll with an agent that "
            "sends a certificate request (one with edgefleet-agent enroll --ca-sha256 support)"
        )
    now = utcnow()
    consumed = session.execute(
        update(EnrollmentToken)
        .where(col(EnrollmentToken.id) == row.id, col(EnrollmentToken.used_at).is_(None))
        .values(used_at=now, used_by=chosen)
        .execution_options(synchronize_session=False)
    )
    if getattr(consumed, "rowcount", 0) != 1:
        raise EnrollmentRefusedError()
    password = generate_mqtt_password()
    api_token = create_token(session, name=f"device {chosen}", role=Role.DEVICE)
    api_token_id = api_token.split("_")[1]
    existing = session.exec(
        select(DeviceRecord).where(DeviceRecord.id == chosen).with_for_update()
    ).first()
    if existing is not None and existing.decommissioned_at is None:
        raise ConflictError(f"device {chosen!r} is already enrolled")
    device = existing if existing is not None else DeviceRecord(id=chosen, mqtt_password_hash="")
    if existing is not None:
        _reset_for_reenrollment(session, existing)
    device.labels = dict(row.labels)
    device.mqtt_password_hash = hash_mqtt_password(password)
    device.nats_password_hash = hash_nats_password(password)
    device.api_token_id = api_token_id
    device.enrolled_at = now
    device.decommissioned_at = None
    session.add(device)
    try:
        session.flush()
    except IntegrityError as exc:
        # Another enrollment inserted the same id between our read and our insert.
        raise ConflictError(f"device {chosen!r} is already enrolled") from exc
    client_certificate = None
    if authority is not None and csr is not None:
        issued = authority.issue_device_certificate(csr, chosen, now=now)
        _store_certificate(session, chosen, issued, now)
        client_certificate = issued.pem
    return Enrollment(
        device_id=chosen,
        labels=dict(row.labels),
        mqtt_username=chosen,
        mqtt_password=password,
        broker_url=settings.device_broker_url,
        topic_prefix=settings.topic_prefix,
        controller_url=settings.device_controller_url,
        controller_token=api_token,
        trust_root=trust_root_envelope.to_json_obj(),
        token_id=row.id,
        reenrolled=existing is not None,
        client_certificate=client_certificate,
        ca_certificate=authority.pem if client_certificate is not None and authority else None,
    )


def decommission_device(session: Session, *, device_id: str) -> DeviceRecord:
    """Retire a device: mark it, clear its desired state, revoke its API token and its
    certificates. Idempotent.

    Its MQTT login stops working where the broker reads the database (the embedded
    broker, which also ends its live session), and in Mosquitto after the next export of
    the password file and the CRL (``edgefleet devices mosquitto-config``).
    """
    device = session.exec(
        select(DeviceRecord).where(DeviceRecord.id == device_id).with_for_update()
    ).first()
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    now = utcnow()
    if device.decommissioned_at is None:
        clear_desired(session, device_id=device.id)  # an empty retained desired state
        device.decommissioned_at = now
        device.online = False
        session.add(device)
    if device.api_token_id is not None:
        api_token = session.get(ApiToken, device.api_token_id)
        if api_token is not None and api_token.revoked_at is None:
            api_token.revoked_at = now
            session.add(api_token)
    _revoke_certificates(session, device.id, now)
    session.flush()
    return device


def device_of_token(session: Session, token_id: str) -> DeviceRecord:
    """The enrolled device whose API token is ``token_id``, its row locked;
    ``NotFoundError`` when the token is no enrolled device's."""
    device = session.exec(
        select(DeviceRecord)
        .where(
            col(DeviceRecord.api_token_id) == token_id,
            col(DeviceRecord.decommissioned_at).is_(None),
        )
        .with_for_update()
    ).first()
    if device is None:
        raise NotFoundError("this token belongs to no enrolled device")
    return device


def renew_device_certificate(
    session: Session, *, token_id: str, csr: str, authority: CertificateAuthority
) -> tuple[str, IssuedCertificate]:
    """A new client certificate for the device whose API token is ``token_id``; its older
    certificates are revoked. Returns (device id, the certificate).

    The device asks over HTTPS with its API token, not over MQTT, so a device whose
    certificate expired or whose renewal was lost in a crash can still get a new one.
    ``NotFoundError`` when the token is no enrolled device's.
    """
    device = device_of_token(session, token_id)
    now = utcnow()
    issued = authority.issue_device_certificate(csr, device.id, now=now)
    _revoke_certificates(session, device.id, now)
    _store_certificate(session, device.id, issued, now)
    session.flush()
    return device.id, issued


def _store_certificate(
    session: Session, device_id: str, issued: IssuedCertificate, now: datetime
) -> None:
    session.add(
        DeviceCertificate(
            serial=issued.serial,
            device_id=device_id,
            sha256=issued.sha256,
            issued_at=now,
            expires_at=issued.not_after,
        )
    )


def _revoke_certificates(session: Session, device_id: str, now: datetime) -> None:
    session.execute(
        update(DeviceCertificate)
        .where(
            col(DeviceCertificate.device_id) == device_id,
            col(DeviceCertificate.revoked_at).is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def _check_token(session: Session, token: str) -> EnrollmentToken:
    prefix, _, rest = token.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != ENROLLMENT_TOKEN_PREFIX or not token_id or not secret or len(token_id) > 32:
        raise EnrollmentRefusedError()
    row = session.get(EnrollmentToken, token_id)
    # Compare even when the row is missing, so timing does not reveal which ids exist.
    expected = row.secret_sha256 if row is not None else _NO_SECRET_SHA256
    matches = hmac.compare_digest(expected, _sha256(secret))
    if row is None or not matches or row.used_at is not None:
        raise EnrollmentRefusedError()
    if _as_utc(row.expires_at) <= utcnow():
        raise EnrollmentRefusedError()
    return row


def _choose_device_id(row: EnrollmentToken, proposed: str | None, settings: Settings) -> str:
    if row.device_id is not None:
        if proposed is not None and proposed != row.device_id:
            raise ConflictError(
                f"this token enrolls device {row.device_id!r}, not {proposed!r}; "
                "drop --device-id or ask for a token for that id"
            )
        return row.device_id
    if proposed is not None:
        return verify_new_device_id(proposed, settings)
    return f"dev-{secrets.token_hex(6)}"


def _refuse_enrolled(session: Session, device_id: str) -> None:
    device = session.get(DeviceRecord, device_id)
    if device is not None and device.decommissioned_at is None:
        raise ConflictError(f"device {device_id!r} is already enrolled")


def _reset_for_reenrollment(session: Session, device: DeviceRecord) -> None:
    """Forget what the old enrollment reported and wanted; keep the sequences growing."""
    _revoke_certificates(session, device.id, utcnow())
    session.execute(
        delete(DeviceEventRecord)
        .where(col(DeviceEventRecord.device_id) == device.id)
        .execution_options(synchronize_session=False)
    )
    device.online = False
    device.last_seen_at = None
    device.phase = None
    device.agent_version = None
    device.reported_state = None
    session.execute(
        delete(DeviceModelRecord)
        .where(col(DeviceModelRecord.device_id) == device.id)
        .execution_options(synchronize_session=False)
    )
    device.desired_sequence = None
    device.published_sequence = None
