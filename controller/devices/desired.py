"""Desired state: sign a deployment of one model for one device and record it as that
device's truth; build the device's retained desired-state message from its models.

Invariants:
- a device's deployment sequence is allocated under its row's lock (``FOR UPDATE`` on
  PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) from one counter for all its models, so no
  two deployments for a device, from however many controllers, share a sequence, and
  sequences only grow: (device, deployment sequence) names one deployment;
- each (device, model) holds at most one desired deployment, the newest signed for it (a
  release, or a signed removal); signing one model's deployment never touches another
  model's row; a shadow order (``sign_shadow``) leaves the release the device should
  serve as it was, and marks the row ``desired_shadow``;
- the signed envelope is stored with the sequence in the same transaction; publishing it
  happens after the commit and may repeat (the device ignores a sequence it has seen), so
  a crash between the two only delays the device until the reconciler publishes it;
- the retained message is one ``DesiredState`` listing the desired envelope of each of the
  device's models (by model name); a model left out means "no news" to the device, and
  an empty payload (no model has a desired envelope) means "nothing";
- ``devices.published_sequence`` below ``devices.desired_sequence`` (or None) means "the
  broker does not hold the device's current desired state"; clearing a model's desired
  deployment resets it, so the shorter list is published once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import func, or_, update
from sqlmodel import Session, col, select

from protocol import (
    Channel,
    Deployment,
    DesiredState,
    Envelope,
    ProbationPolicy,
    ShadowOrder,
    SigningKey,
    device_topic,
)

from ..errors import ConflictError, NotFoundError
from ..registry.tables import ReleaseRecord
from ..rollouts.tables import RolloutRecord
from .tables import DeviceModelRecord, DeviceRecord

__all__ = [
    "DeploymentSigner",
    "DesiredMessage",
    "clear_desired",
    "lock_device",
    "mark_all_unpublished",
    "mark_published",
    "remove_model",
    "sign_deployment",
    "sign_removal",
    "sign_shadow",
    "unpublished_messages",
]


class DeploymentSigner(Protocol):
    """What signs deployments: the deployment key, and the trust roots a device holding
    an older version must walk (``controller.signing.Signer``)."""

    @property
    def deployment_key(self) -> SigningKey: ...

    def trust_roots_after(self, version: int | None) -> list[Envelope]: ...


@dataclass(frozen=True)
class DesiredMessage:
    """A retained message for the broker: the device's desired state, or empty to clear."""

    device_id: str
    sequence: int  # the device's desired_sequence when built; 0 if it never had one
    topic: str
    payload: bytes


def lock_device(session: Session, device_id: str) -> DeviceRecord:
    device = session.exec(
        select(DeviceRecord).where(DeviceRecord.id == device_id).with_for_update()
    ).first()
    if device is None:
        raise NotFoundError(f"device {device_id!r} is not enrolled")
    return device


def _model_row(session: Session, device_id: str, model: str) -> DeviceModelRecord:
    """The (device, model) row, created if missing; call with the device row locked."""
    row = session.get(DeviceModelRecord, (device_id, model))
    if row is None:
        row = DeviceModelRecord(device_id=device_id, model_name=model)
    return row


def _sign(
    session: Session,
    *,
    device_id: str,
    model: str,
    signer: DeploymentSigner,
    now: datetime,
    ttl_s: float,
    release: ReleaseRecord | None,
    rollout_id: str | None,
    rollback: bool,
    probation: ProbationPolicy | None,
    shadow: ShadowOrder | None = None,
    mirrors: Sequence[str] = (),
) -> int:
    device = lock_device(session, device_id)
    sequence = device.next_deployment_sequence
    # Every trust root the device has yet to walk rides along: a rotation on the
    # controller reaches the device with its next deployment, however far behind it is.
    reported = (device.reported_state or {}).get("trust_root_version")
    chain = signer.trust_roots_after(reported if isinstance(reported, int) else None)
    deployment = Deployment(
        device_id=device_id,
        sequence=sequence,
        issued_at=now,
        expires=now + timedelta(seconds=ttl_s),
        model=model,
        release=None
        if release is None or shadow is not None
        else Envelope.from_bytes(release.envelope.encode("utf-8")).to_json_obj(),
        remove=release is None and shadow is None,
        shadow=shadow,
        rollback=rollback,
        probation=probation or ProbationPolicy(),
        rollout_id=rollout_id,
        trust_roots=[root.to_json_obj() for root in chain],
        mirrors=list(mirrors),
    )
    envelope = deployment.sign([signer.deployment_key])
    device.next_deployment_sequence = sequence + 1
    device.desired_sequence = sequence
    row = _model_row(session, device_id, model)
    if shadow is None:
        row.desired_release_id = None if release is None else release.id
        row.desired_rollout_id = rollout_id
        row.desired_rollback = rollback
        row.desired_remove = release is None
    # A shadow order leaves what the device should serve as it was.
    row.desired_shadow = shadow is not None
    row.desired_sequence = sequence
    row.desired_expires_at = deployment.expires
    row.desired_envelope = envelope.to_bytes().decode("utf-8")
    session.add(device)
    session.add(row)
    return sequence


def sign_deployment(
    session: Session,
    *,
    device_id: str,
    release: ReleaseRecord,
    signer: DeploymentSigner,
    now: datetime,
    ttl_s: float,
    rollout_id: str | None,
    rollback: bool = False,
    probation: ProbationPolicy | None = None,
    mirrors: Sequence[str] = (),
) -> int:
    """Sign a deployment of ``release`` (of its model) for the device, store it as that
    model's desired deployment; returns its sequence. ``mirrors`` are the artifact
    mirrors' base URLs the device tries, in order, before the controller."""
    return _sign(
        session,
        device_id=device_id,
        model=release.model_name,
        signer=signer,
        now=now,
        ttl_s=ttl_s,
        release=release,
        rollout_id=rollout_id,
        rollback=rollback,
        probation=probation,
        mirrors=mirrors,
    )


def sign_shadow(
    session: Session,
    *,
    device_id: str,
    model: str,
    candidate: ReleaseRecord | None,
    until: datetime | None,
    max_cpu_fraction: float,
    signer: DeploymentSigner,
    now: datetime,
    ttl_s: float,
    rollout_id: str,
) -> int:
    """Sign an order to run ``candidate`` as a shadow of ``model`` until ``until`` (None: stop
    the shadow), store it as that model's desired deployment; returns its sequence."""
    order = ShadowOrder(
        release=None
        if candidate is None
        else Envelope.from_bytes(candidate.envelope.encode("utf-8")).to_json_obj(),
        until=until,
        max_cpu_fraction=max_cpu_fraction,
    )
    return _sign(
        session,
        device_id=device_id,
        model=model,
        signer=signer,
        now=now,
        ttl_s=ttl_s,
        release=None,
        rollout_id=rollout_id,
        rollback=False,
        probation=None,
        shadow=order,
    )


def sign_removal(
    session: Session,
    *,
    device_id: str,
    model: str,
    signer: DeploymentSigner,
    now: datetime,
    ttl_s: float,
) -> int:
    """Sign an order to remove ``model`` from the device, store it as that model's desired
    deployment; returns its sequence."""
    return _sign(
        session,
        device_id=device_id,
        model=model,
        signer=signer,
        now=now,
        ttl_s=ttl_s,
        release=None,
        rollout_id=None,
        rollback=False,
        probation=None,
    )


def remove_model(
    session: Session,
    *,
    device_id: str,
    model: str,
    signer: DeploymentSigner,
    now: datetime,
    ttl_s: float,
) -> int:
    """An operator's order to remove ``model`` from the device: refused for a device that
    is decommissioned or has no such model, and while an unfinished rollout of the model
    deploys it there (abort that rollout first, or it would fight the removal)."""
    device = lock_device(session, device_id)
    if device.decommissioned_at is not None:
        raise ConflictError(f"device {device_id!r} is decommissioned")
    row = session.get(DeviceModelRecord, (device_id, model))
    if row is None:
        raise NotFoundError(f"device {device_id!r} has no model {model!r}")
    if row.desired_rollout_id is not None:
        rollout = session.get(RolloutRecord, row.desired_rollout_id)
        if rollout is not None and rollout.status in (
            "pending",
            "shadow",
            "running",
            "soaking",
            "paused",
        ):
            raise ConflictError(
                f"rollout {rollout.id} of {model} is {rollout.status} on {device_id}: "
                "abort it first"
            )
    return sign_removal(
        session, device_id=device_id, model=model, signer=signer, now=now, ttl_s=ttl_s
    )


def clear_desired(session: Session, *, device_id: str, model: str | None = None) -> None:
    """No desired deployment of ``model`` (of any model when None) any more: the device
    keeps what it runs and is told nothing new about it."""
    device = lock_device(session, device_id)
    query = select(DeviceModelRecord).where(
        DeviceModelRecord.device_id == device_id,
        col(DeviceModelRecord.desired_envelope).is_not(None),
    )
    if model is not None:
        query = query.where(DeviceModelRecord.model_name == model)
    rows = session.exec(query).all()
    if not rows:
        return  # never told anything: nothing to clear
    for row in rows:
        row.desired_release_id = None
        row.desired_rollout_id = None
        row.desired_rollback = False
        row.desired_remove = False
        row.desired_expires_at = None
        row.desired_envelope = None
        session.add(row)
    device.published_sequence = None  # publish the shorter list once
    session.add(device)


def unpublished_messages(session: Session, prefix: str, *, limit: int) -> list[DesiredMessage]:
    """Desired states the broker does not hold yet, oldest device first."""
    devices = session.exec(
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
    if not devices:
        return []
    envelopes: dict[str, list[str]] = {}
    for row in session.exec(
        select(DeviceModelRecord)
        .where(
            col(DeviceModelRecord.device_id).in_([device.id for device in devices]),
            col(DeviceModelRecord.desired_envelope).is_not(None),
        )
        .order_by(col(DeviceModelRecord.device_id), col(DeviceModelRecord.model_name))
    ).all():
        if row.desired_envelope is not None:  # always, by the query; narrows the type
            envelopes.setdefault(row.device_id, []).append(row.desired_envelope)
    return [_message(prefix, device, envelopes.get(device.id, [])) for device in devices]


def _message(prefix: str, device: DeviceRecord, envelopes: Sequence[str]) -> DesiredMessage:
    topic = device_topic(prefix, device.id, Channel.DESIRED)
    sequence = device.desired_sequence or 0
    if not envelopes:
        return DesiredMessage(device.id, sequence, topic, b"")
    state = DesiredState(
        device_id=device.id,
        deployments=[Envelope.from_bytes(e.encode("utf-8")).to_json_obj() for e in envelopes],
    )
    return DesiredMessage(device.id, sequence, topic, state.to_payload())


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
