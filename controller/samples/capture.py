"""Capture orders: turning sample capture on (or off) for a model on some devices.

``order_capture`` is the one way capture is turned on, whoever asks (an operator's
``edgefleet samples capture``, an alert rule that fires, a rollout): for each device it
signs a ``capture`` ``Command`` with the deployment key, from the device's command
sequence (allocated under the device's row lock, so sequences never repeat), and records
it. The fleet service publishes recorded orders to online devices
(``due_capture_orders``, then ``mark_capture_published``) after the transaction commits.

Capture is on for a (device, model) while the newest order for it says on and its
``until`` has not passed (``active_captures``); the dashboard, the samples link in alert
webhooks and the API read it from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from protocol import CAPTURE_ACTION, CapturePolicy, Channel, Command, device_topic

from ..devices.desired import DeploymentSigner
from ..devices.selectors import Selector
from ..devices.tables import DeviceModelRecord, DeviceRecord
from ..errors import BadRequestError, NotFoundError
from .tables import CaptureOrderRecord

__all__ = [
    "COMMAND_TTL",
    "ActiveCapture",
    "CaptureMessage",
    "active_captures",
    "capture_devices",
    "due_capture_orders",
    "mark_capture_published",
    "order_capture",
    "samples_link",
]

# How long a capture command stays valid for a device that was offline when it was sent.
COMMAND_TTL = timedelta(days=1)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def capture_devices(session: Session, *, model: str, selector: Selector) -> list[str]:
    """Enrolled devices matching ``selector`` that run or are assigned ``model``."""
    rows = session.exec(
        select(DeviceRecord)
        .join(DeviceModelRecord, col(DeviceModelRecord.device_id) == col(DeviceRecord.id))
        .where(
            col(DeviceRecord.decommissioned_at).is_(None),
            col(DeviceModelRecord.model_name) == model,
        )
        .order_by(col(DeviceRecord.id))
    ).all()
    return [device.id for device in rows if selector.matches(device.labels)]


def order_capture(
    session: Session,
    signer: DeploymentSigner,
    device_ids: Iterable[str],
    *,
    model: str,
    below_confidence: float,
    per_hour: int,
    max_bytes: int,
    until: datetime,
    off: bool = False,
    rare_input_share: float | None = None,
    source: str,
    now: datetime,
) -> list[CaptureOrderRecord]:
    """Sign and record a capture order of ``model`` for each device (see the module doc).

    Raises ``BadRequestError`` for a policy out of bounds, ``NotFoundError`` for a device
    that is not enrolled. The caller's transaction commits the orders; nothing is sent
    before that.
    """
    try:
        policy = CapturePolicy(
            model=model,
            below_confidence=below_confidence,
            rare_input_share=rare_input_share,
            per_hour=per_hour,
            max_bytes=max_bytes,
            until=until,
            off=off,
        )
    except ValueError as exc:
        raise BadRequestError(f"bad capture policy: {exc}") from exc
    if not off and until <= now:
        raise BadRequestError("a capture order must end in the future")
    orders = []
    for device_id in sorted(set(device_ids)):
        device = session.exec(
            select(DeviceRecord).where(DeviceRecord.id == device_id).with_for_update()
        ).first()
        if device is None or device.decommissioned_at is not None:
            raise NotFoundError(f"device {device_id!r} is not enrolled")
        sequence = device.next_command_sequence
        reported = (device.reported_state or {}).get("trust_root_version")
        chain = signer.trust_roots_after(reported if isinstance(reported, int) else None)
        command = Command(
            device_id=device_id,
            sequence=sequence,
            issued_at=now,
            expires=now + COMMAND_TTL,
            action=CAPTURE_ACTION,
            args=policy.to_args(),
            trust_roots=[root.to_json_obj() for root in chain],
        )
        envelope = command.sign([signer.deployment_key])
        device.next_command_sequence = sequence + 1
        session.add(device)
        order = CaptureOrderRecord(
            device_id=device_id,
            model_name=model,
            below_confidence=below_confidence,
            rare_input_share=rare_input_share,
            per_hour=per_hour,
            max_bytes=max_bytes,
            until=until,
            off=off,
            source=source[:160],
            issued_at=now,
            command_sequence=sequence,
            envelope=envelope.to_bytes().decode("utf-8"),
        )
        session.add(order)
        orders.append(order)
    session.flush()
    return orders


@dataclass(frozen=True)
class ActiveCapture:
    device_id: str
    model: str
    until: datetime
    below_confidence: float
    rare_input_share: float | None
    per_hour: int
    max_bytes: int
    source: str


def active_captures(
    session: Session,
    *,
    now: datetime,
    model: str | None = None,
    device_id: str | None = None,
) -> list[ActiveCapture]:
    """Capture that is on now, per (device, model): its newest order, on and unexpired."""
    newest = select(func.max(CaptureOrderRecord.id)).group_by(
        col(CaptureOrderRecord.device_id), col(CaptureOrderRecord.model_name)
    )
    if model is not None:
        newest = newest.where(col(CaptureOrderRecord.model_name) == model)
    if device_id is not None:
        newest = newest.where(col(CaptureOrderRecord.device_id) == device_id)
    rows = session.exec(
        select(CaptureOrderRecord)
        .where(col(CaptureOrderRecord.id).in_(newest.scalar_subquery()))
        .order_by(col(CaptureOrderRecord.model_name), col(CaptureOrderRecord.device_id))
    ).all()
    return [
        ActiveCapture(
            device_id=row.device_id,
            model=row.model_name,
            until=_utc(row.until),
            below_confidence=row.below_confidence,
            rare_input_share=row.rare_input_share,
            per_hour=row.per_hour,
            max_bytes=row.max_bytes,
            source=row.source,
        )
        for row in rows
        if not row.off and _utc(row.until) > now
    ]


def samples_link(*, model: str, since: datetime) -> dict[str, str]:
    """Where ``model``'s samples captured from ``since`` are: the API query (a path on
    the controller, for a viewer's token) and the command that exports them."""
    stamp = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "url": f"/api/v1/samples?model={model}&since={stamp}",
        "model": model,
        "since": stamp,
        "export": f"edgefleet samples export --model {model} --since {stamp} {model}.npz",
    }


@dataclass(frozen=True)
class CaptureMessage:
    order_id: int
    topic: str
    payload: bytes


def due_capture_orders(session: Session, prefix: str, *, limit: int) -> list[CaptureMessage]:
    """Orders not yet published to devices that are online now, oldest first."""
    rows = session.exec(
        select(CaptureOrderRecord)
        .join(DeviceRecord, col(DeviceRecord.id) == col(CaptureOrderRecord.device_id))
        .where(
            col(CaptureOrderRecord.published_at).is_(None),
            col(DeviceRecord.online).is_(True),
            col(DeviceRecord.decommissioned_at).is_(None),
        )
        .order_by(col(CaptureOrderRecord.id))
        .limit(limit)
    ).all()
    return [
        CaptureMessage(
            order_id=row.id or 0,
            topic=device_topic(prefix, row.device_id, Channel.CMD),
            payload=row.envelope.encode("utf-8"),
        )
        for row in rows
    ]


def mark_capture_published(session: Session, order_ids: Sequence[int], *, now: datetime) -> None:
    if order_ids:
        session.execute(
            update(CaptureOrderRecord)
            .where(col(CaptureOrderRecord.id).in_(list(order_ids)))
            .values(published_at=now)
        )
