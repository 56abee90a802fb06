"""Desired state: sign a deployment for one device and record it as that device's truth.

Invariants:
- a device's deployment sequence is allocated under its row's lock (``FOR UPDATE`` on
  PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so no two deployments for a device, from
  however many controllers, share a sequence, and sequences only grow;
- the signed envelope is stored with the sequence in the same transaction; publishing it
  happens after the commit and may repeat (the device ignores an equal sequence), so a
  crash between the two only delays the device until the reconciler publishes it;
- ``published_sequence`` below ``desired_sequence`` means "not yet handed to the broker".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from protocol import Channel, Deployment, Envelope, ProbationPolicy, SigningKey, device_topic

from ..errors import NotFoundError
from ..registry.tables import ReleaseRecord
from .tables import DeviceRecord

__all__ = [
    "DesiredMessage",
    "clear_desired",
    "lock_device",
    "mark_all_unpublished",
    "mark_published",
    "sign_deployment",
    "unpublished_messages",
]


@dataclass(frozen=True)
class DesiredMessage:
    """A retained message for the broker: a signed deployment, or empty to clear."""

    device_id: str
    sequence: int  # 0 for a cleared desired state
    topic: str
    payload: bytes


def lock_device(session: Session, device_id: str) -> DeviceRecord:
    device = session.exec(
        select(DeviceRecord).where(DeviceRecord.id == device_id).with_for_update()
    ).first()
    if device is None:
        raise NotFoundError(f"device {device_id!r} is not enrolled")
    return device


def sign_deployment(
    session: Session,
    *,
    device_id: str,
    release: ReleaseRecord,
    key: SigningKey,
    now: datetime,
    ttl_s: float,
    rollout_id: str | None,
    rollback: bool = False,
    probation: ProbationPolicy | None = None,
) -> int:
    """Sign a deployment of ``release`` for the device and store it; returns its sequence."""
    device = lock_device(session, device_id)
    sequence = device.next_deployment_sequence
    deployment = Deployment(
        device_id=device_id,
        sequence=sequence,
        issued_at=now,
        expires=now + timedelta(seconds=ttl_s),
        release=Envelope.from_bytes(release.envelope.encode("utf-8")).to_json_obj(),
        rollback=rollback,
        probation=probation or ProbationPolicy(),
        rollout_id=rollout_id,
    )
    envelope = deployment.sign([key])
    device.next_deployment_sequence = sequence + 1
    device.desired_release_id = release.id
    device.desired_rollout_id = rollout_id
    device.desired_rollback = rollback
    device.desired_sequence = sequence
    device.desired_expires_at = deployment.expires
    device.desired_envelope = envelope.to_bytes().decode("utf-8")
    session.add(device)
    return sequence


def clear_desired(session: Session, *, device_id: str) -> None:
    """No desired release any more: the device keeps what it runs and is told nothing."""
    device = lock_device(session, device_id)
    if device.desired_sequence is None:
        return  # never told anything: nothing to clear
    device.desired_release_id = None
    device.desired_rollout_id = None
    device.desired_rollback = False
    device.desired_expires_at = None
    device.desired_envelope = None
    device.published_sequence = None  # publish the empty retained message once
    session.add(device)


def unpublished_messages(session: Session, prefix: str, *, limit: int) -> list[DesiredMessage]:
    """Desired states the broker does not hold yet, oldest device first."""
    rows = session.exec(
        select(DeviceRecord)
        .where(
            # Decommissioned devices too: their cleared desired state is published once.
            or_(
                col(DeviceRecord.published_sequence).is_(None),
                col(DeviceRecord.published_sequence) < col(DeviceRecord.desired_sequence),
            ),
            col(DeviceRecord.desired_sequence).is_not(None),
        )
        .order_by(col(DeviceRecord.id))
        .limit(limit)
    ).all()
    return [_message(prefix, row) for row in rows]


def _message(prefix: str, row: DeviceRecord) -> DesiredMessage:
    topic = device_topic(prefix, row.id, Channel.DESIRED)
    if row.desired_envelope is None:
        return DesiredMessage(row.id, row.desired_sequence or 0, topic, b"")
    return DesiredMessage(
        row.id, row.desired_sequence or 0, topic, row.desired_envelope.encode("utf-8")
    )


def mark_published(session: Session, messages: Sequence[DesiredMessage]) -> None:
    """Record what the broker acknowledged; a newer sequence signed meanwhile stays due."""
    for message in messages:
        session.execute(
            update(DeviceRecord)
            .where(
                col(DeviceRecord.id) == message.device_id,
                func.coalesce(col(DeviceRecord.desired_sequence), 0) == message.sequence,
            )
            .values(published_sequence=message.sequence)
        )


def mark_all_unpublished(session: Session) -> int:
    """After the broker lost its retained messages (a restart), publish every one again."""
    result = session.execute(
        update(DeviceRecord)
        .where(col(DeviceRecord.desired_sequence).is_not(None))
        .values(published_sequence=None)
    )
    return int(getattr(result, "rowcount", 0) or 0)
