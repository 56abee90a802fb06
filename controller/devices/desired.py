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
- ``sign_deployments`` (a rollout's wave) writes the same rows, sequences and envelopes
  as ``sign_deployment`` one device at a time would, in a few bulk statements;
- ``devices.published_sequence`` below ``devices.desired_sequence`` (or None) means "the
  broker does not hold the device's current desired state"; clearing a model's desired
  deployment resets it, so the shorter list is published once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import bindparam, func, insert, or_, update
from sqlalchemy import select as sa_select
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
    "sign_deployments",
    "sign_removal",
    "sign_shadow",
    "unpublished_messages",
]


# Ids per IN (...) list when rows of many devices are read or locked at once.
LOCK_CHUNK = 1000


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
    expires = now + timedelta(seconds=ttl_s)
    envelope = _DeploymentSigning(
        signer=signer,
        model=model,
        now=now,
        expires=expires,
        release=release,
        rollout_id=rollout_id,
        rollback=rollback,
        probation=probation,
        shadow=shadow,
        mirrors=mirrors,
    ).envelope(device_id, sequence, device.reported_state)
    device.next_deployment_sequence = sequence + 1
    device.desired_sequence = sequence
    row = session.get(DeviceModelRecord, (device_id, model))
    if row is None:
        row = DeviceModelRecord(device_id=device_id, model_name=model)
    if shadow is None:
        row.desired_release_id = None if release is None else release.id
        row.desired_rollout_id = rollout_id
        row.desired_rollback = rollback
        row.desired_remove = release is None
    # A shadow order leaves what the device should serve as it was.
    row.desired_shadow = shadow is not None
    row.desired_sequence = sequence
    row.desired_expires_at = expires
    row.desired_envelope = envelope
    session.add(device)
    session.add(row)
    return sequence


class _DeploymentSigning:
    """Signs one kind of deployment for many devices: the release's envelope is parsed
    once, and each trust-root chain built once per reported trust-root version."""

    def __init__(
        self,
        *,
        signer: DeploymentSigner,
        model: str,
        now: datetime,
        expires: datetime,
        release: ReleaseRecord | None,
        rollout_id: str | None,
        rollback: bool,
        probation: ProbationPolicy | None,
        shadow: ShadowOrder | None,
        mirrors: Sequence[str],
    ) -> None:
        self.signer = signer
        self.model = model
        self.now = now
        self.expires = expires
        self.release = (
            None
            if release is None or shadow is not None
            else Envelope.from_bytes(release.envelope.encode("utf-8")).to_json_obj()
        )
        self.remove = release is None and shadow is None
        self.rollout_id = rollout_id
        self.rollback = rollback
        self.probation = probation or ProbationPolicy()
        self.shadow = shadow
        self.mirrors = list(mirrors)
        self._chains: dict[int | None, list[dict[str, Any]]] = {}

    def envelope(self, device_id: str, sequence: int, reported_state: dict[str, Any] | None) -> str:
        """The signed deployment's envelope, as stored (canonical JSON text)."""
        # Every trust root the device has yet to walk rides along: a rotation on the
        # controller reaches the device with its next deployment, however far behind it is.
        reported = (reported_state or {}).get("trust_root_version")
        version = reported if isinstance(reported, int) else None
        if version not in self._chains:
            self._chains[version] = [
                root.to_json_obj() for root in self.signer.trust_roots_after(version)
            ]
        deployment = Deployment(
            device_id=device_id,
            sequence=sequence,
            issued_at=self.now,
            expires=self.expires,
            model=self.model,
            release=self.release,
            remove=self.remove,
            shadow=self.shadow,
            rollback=self.rollback,
            probation=self.probation,
            rollout_id=self.rollout_id,
            trust_roots=self._chains[version],
            mirrors=self.mirrors,
        )
        envelope = deployment.sign([self.signer.deployment_key])
        return envelope.to_bytes().decode("utf-8")


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


def sign_deployments(
    session: Session,
    *,
    device_ids: Sequence[str],
    release: ReleaseRecord,
    signer: DeploymentSigner,
    now: datetime,
    ttl_s: float,
    rollout_id: str | None,
    rollback: bool = False,
    probation: ProbationPolicy | None = None,
    mirrors: Sequence[str] = (),
) -> dict[str, int]:
    """``sign_deployment`` for many distinct devices at once (a rollout's wave); returns
    each device's sequence. ``NotFoundError`` (nothing written) for an unknown device.

    The same rows and envelopes, but the devices are locked and read in a few queries
    (in id order, so two batches never lock in a cycle) and the rows written by a few
    bulk statements, past the ORM: the session's pending changes are flushed first, and
    rows it holds of these devices are expired, so they are read again when used.
    """
    if len(set(device_ids)) != len(device_ids):
        raise ValueError("sign_deployments takes each device once")
    session.flush()
    devices_table = DeviceRecord.__table__  # type: ignore[attr-defined]
    models_table = DeviceModelRecord.__table__  # type: ignore[attr-defined]
    model = release.model_name
    locked: dict[str, tuple[int, dict[str, Any] | None]] = {}
    with_row: set[str] = set()
    ordered = sorted(device_ids)
    for first in range(0, len(ordered), LOCK_CHUNK):
        chunk = ordered[first : first + LOCK_CHUNK]
        for device_id, next_sequence, reported_state in session.execute(
            sa_select(
                devices_table.c.id,
                devices_table.c.next_deployment_sequence,
                devices_table.c.reported_state,
            )
            .where(devices_table.c.id.in_(chunk))
            .order_by(devices_table.c.id)
            .with_for_update()
        ):
            locked[device_id] = (next_sequence, reported_state)
        with_row.update(
            session.execute(
                sa_select(models_table.c.device_id).where(
                    models_table.c.device_id.in_(chunk), models_table.c.model_name == model
                )
            ).scalars()
        )
    for device_id in device_ids:
        if device_id not in locked:
            raise NotFoundError(f"device {device_id!r} is not enrolled")
    expires = now + timedelta(seconds=ttl_s)
    signing = _DeploymentSigning(
        signer=signer,
        model=model,
        now=now,
        expires=expires,
        release=release,
        rollout_id=rollout_id,
        rollback=rollback,
        probation=probation,
        shadow=None,
        mirrors=mirrors,
    )
    sequences: dict[str, int] = {}
    device_rows: list[dict[str, Any]] = []
    model_rows: list[dict[str, Any]] = []
    for device_id in device_ids:
        sequence, reported_state = locked[device_id]
        sequences[device_id] = sequence
        device_rows.append({"b_id": device_id, "b_next": sequence + 1, "b_sequence": sequence})
        model_rows.append(
            {
                "device_id": device_id,
                "model_name": model,
                "desired_release_id": release.id,
                "desired_rollout_id": rollout_id,
                "desired_rollback": rollback,
                "desired_remove": False,
                "desired_shadow": False,
                "desired_sequence": sequence,
                "desired_expires_at": expires,
                "desired_envelope": signing.envelope(device_id, sequence, reported_state),
            }
        )
    connection = session.connection()
    connection.execute(
        update(devices_table)
        .where(devices_table.c.id == bindparam("b_id"))
        .values(
            next_deployment_sequence=bindparam("b_next"), desired_sequence=bindparam("b_sequence")
        ),
        device_rows,
    )
    updates = [row for row in model_rows if row["device_id"] in with_row]
    if updates:
        connection.execute(
            update(models_table)
            .where(
                models_table.c.device_id == bindparam("b_device_id"),
                models_table.c.model_name == bindparam("b_model_name"),
            )
            .values({name: bindparam(f"b_{name}") for name in _DESIRED_COLUMNS}),
            [{f"b_{name}": value for name, value in row.items()} for row in updates],
        )
    inserts = [row for row in model_rows if row["device_id"] not in with_row]
    if inserts:
        connection.execute(insert(models_table), inserts)
    _expire_held(session, set(device_ids))
    return sequences


_DESIRED_COLUMNS = (
    "desired_release_id",
    "desired_rollout_id",
    "desired_rollback",
    "desired_remove",
    "desired_shadow",
    "desired_sequence",
    "desired_expires_at",
    "desired_envelope",
)


def _expire_held(session: Session, device_ids: set[str]) -> None:
    """Rows of these devices the session holds read the database again when next used."""
    for held in list(session.identity_map.values()):
        device_id = (
            held.id
            if isinstance(held, DeviceRecord)
            else held.device_id
            if isinstance(held, DeviceModelRecord)
            else None
        )
        if device_id in device_ids:
            session.expire(held)


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
    """Desired states the broker does not hold yet, oldest device first.

    Reads plain columns, not ORM objects: the publisher builds thousands of these when a
    wave is signed."""
    devices_table = DeviceRecord.__table__  # type: ignore[attr-defined]
    models_table = DeviceModelRecord.__table__  # type: ignore[attr-defined]
    devices = session.execute(
        sa_select(devices_table.c.id, devices_table.c.desired_sequence)
        .where(
            # Decommissioned devices too: their cleared desired state is published once.
            or_(
                devices_table.c.published_sequence.is_(None),
                devices_table.c.published_sequence < devices_table.c.desired_sequence,
            ),
            devices_table.c.desired_sequence.is_not(None),
        )
        .order_by(devices_table.c.id)
        .limit(limit)
    ).all()
    if not devices:
        return []
    envelopes: dict[str, list[str]] = {}
    for device_id, envelope in session.execute(
        sa_select(models_table.c.device_id, models_table.c.desired_envelope)
        .where(
            models_table.c.device_id.in_([device_id for device_id, _ in devices]),
            models_table.c.desired_envelope.is_not(None),
        )
        .order_by(models_table.c.device_id, models_table.c.model_name)
    ).all():
        envelopes.setdefault(device_id, []).append(envelope)
    return [
        _message(prefix, device_id, sequence or 0, envelopes.get(device_id, []))
        for device_id, sequence in devices
    ]


def _message(
    prefix: str, device_id: str, sequence: int, envelopes: Sequence[str]
) -> DesiredMessage:
    topic = device_topic(prefix, device_id, Channel.DESIRED)
    if not envelopes:
        return DesiredMessage(device_id, sequence, topic, b"")
    state = DesiredState(
        device_id=device_id,
        deployments=[Envelope.from_bytes(e.encode("utf-8")).to_json_obj() for e in envelopes],
    )
    return DesiredMessage(device_id, sequence, topic, state.to_payload())


def mark_published(session: Session, messages: Sequence[DesiredMessage]) -> None:
    """Record what the broker acknowledged; a newer sequence signed meanwhile stays due.

    One statement executed for all the messages (executemany), not one round trip each.
    """
    if not messages:
        return
    session.flush()  # nothing pending of these rows is expired away below
    table = DeviceRecord.__table__  # type: ignore[attr-defined]
    statement = (
        update(table)
        .where(
            table.c.id == bindparam("device"),
            func.coalesce(table.c.desired_sequence, 0) == bindparam("sequence"),
        )
        .values(published_sequence=bindparam("sequence"))
    )
    session.connection().execute(
        statement,
        [{"device": message.device_id, "sequence": message.sequence} for message in messages],
    )
    # The statement went past the ORM: rows this session holds read it again when used.
    _expire_held(session, {message.device_id for message in messages})


def mark_all_unpublished(session: Session) -> int:
    """After the broker lost its retained messages (a restart), publish every one again."""
    result = session.execute(
        update(DeviceRecord)
        .where(col(DeviceRecord.desired_sequence).is_not(None))
        .values(published_sequence=None)
    )
    return int(getattr(result, "rowcount", 0) or 0)
