"""The fleet's devices as the API shows them: lists, details, labels, releases in use.

Invariants: reads never change a row; decommissioned devices are left out unless asked
for; a device is shown with every model it has a ``device_models`` row for (reported or
desired), by model name; label changes assign a new dict (JSON columns only notice
assignment) and are checked with the selectors' label rules, so every stored label can
be selected.
Selectors are matched in Python over the rows the SQL filters leave, so a selector means
exactly what ``controller.devices.selectors`` says, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from ..errors import BadRequestError, ConflictError, NotFoundError
from ..registry.tables import ReleaseRecord
from ..rollouts.tables import RolloutAssignmentRecord, RolloutRecord
from .selectors import Selector, verify_labels
from .tables import (
    DeviceCertificate,
    DeviceEventRecord,
    DeviceModelRecord,
    DeviceRecord,
    telemetry_table,
)

__all__ = [
    "DETAIL_EVENTS",
    "DETAIL_TELEMETRY_WINDOWS",
    "AssignmentView",
    "DeviceDetailView",
    "DeviceView",
    "FleetReleaseRow",
    "ModelView",
    "PhaseCount",
    "fleet_phases",
    "fleet_releases",
    "get_device_detail",
    "get_device_summary",
    "list_devices",
    "update_labels",
]

DETAIL_EVENTS = 50
DETAIL_TELEMETRY_WINDOWS = 20
IN_CHUNK = 500  # ids per IN (...) list: far below every database's bound parameter limit


@dataclass(frozen=True)
class ModelView:
    """One model on a device: its row, and the version of its desired release (None for
    a removal, or when nothing is desired)."""

    row: DeviceModelRecord
    desired_version: int | None


@dataclass(frozen=True)
class DeviceView:
    device: DeviceRecord
    models: list[ModelView]


@dataclass(frozen=True)
class AssignmentView:
    assignment: RolloutAssignmentRecord
    model: str | None
    version: int | None


@dataclass(frozen=True)
class DeviceDetailView:
    summary: DeviceView
    assignments: list[AssignmentView]
    events: list[DeviceEventRecord]
    telemetry: list[dict[str, Any]]
    # The device's live client certificate (None: it logs in with a password only).
    certificate: DeviceCertificate | None = None


@dataclass(frozen=True)
class FleetReleaseRow:
    model: str
    version: int | None
    devices: int
    online: int


@dataclass(frozen=True)
class PhaseCount:
    phase: str | None  # None: the device never reported its state
    devices: int
    online: int


def _models_of(session: Session, device_ids: Sequence[str]) -> dict[str, list[ModelView]]:
    """The model rows of the devices, each device's by model name."""
    found: dict[str, list[ModelView]] = {device_id: [] for device_id in device_ids}
    ids = sorted(found)
    for start in range(0, len(ids), IN_CHUNK):
        rows = session.exec(
            select(DeviceModelRecord, ReleaseRecord.version)
            .outerjoin(
                ReleaseRecord, col(DeviceModelRecord.desired_release_id) == col(ReleaseRecord.id)
            )
            .where(col(DeviceModelRecord.device_id).in_(ids[start : start + IN_CHUNK]))
            .order_by(col(DeviceModelRecord.device_id), col(DeviceModelRecord.model_name))
        ).all()
        for row, version in rows:
            found[row.device_id].append(ModelView(row, version))
    return found


def _views(session: Session, devices: Sequence[DeviceRecord]) -> list[DeviceView]:
    models = _models_of(session, [device.id for device in devices])
    return [DeviceView(device, models[device.id]) for device in devices]


def list_devices(
    session: Session,
    *,
    selector: Selector,
    online: bool | None = None,
    model: str | None = None,
    version: int | None = None,
    include_decommissioned: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> list[DeviceView]:
    """Devices by id; ``model``/``version`` filter on what a device reports running (one
    model of the device runs ``model``, at ``version`` when given)."""
    query = select(DeviceRecord)
    if not include_decommissioned:
        query = query.where(col(DeviceRecord.decommissioned_at).is_(None))
    if online is not None:
        query = query.where(col(DeviceRecord.online) == online)
    if model is not None or version is not None:
        running = select(DeviceModelRecord.device_id).where(
            col(DeviceModelRecord.device_id) == col(DeviceRecord.id),
            col(DeviceModelRecord.active_version).is_not(None),
        )
        if model is not None:
            running = running.where(col(DeviceModelRecord.model_name) == model)
        if version is not None:
            running = running.where(col(DeviceModelRecord.active_version) == version)
        query = query.where(running.exists())
    query = query.order_by(col(DeviceRecord.id))
    if not selector.requirements:
        return _views(session, session.exec(query.offset(offset).limit(limit)).all())
    matched = (device for device in session.exec(query) if selector.matches(device.labels))
    devices: list[DeviceRecord] = []
    for index, device in enumerate(matched):
        if index >= offset + limit:
            break
        if index >= offset:
            devices.append(device)
    return _views(session, devices)


def get_device_summary(session: Session, *, device_id: str) -> DeviceView:
    """One device's summary (decommissioned ones too)."""
    device = session.get(DeviceRecord, device_id)
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    return _views(session, [device])[0]


def get_device_detail(session: Session, *, device_id: str) -> DeviceDetailView:
    """One device (decommissioned ones too) with its history and recent statistics."""
    summary = get_device_summary(session, device_id=device_id)
    assignments = session.exec(
        select(RolloutAssignmentRecord, ReleaseRecord.model_name, ReleaseRecord.version)
        .join(RolloutRecord, col(RolloutRecord.id) == col(RolloutAssignmentRecord.rollout_id))
        .outerjoin(ReleaseRecord, col(ReleaseRecord.id) == col(RolloutRecord.release_id))
        .where(col(RolloutAssignmentRecord.device_id) == device_id)
        .order_by(col(RolloutAssignmentRecord.assigned_at_s).desc())
    ).all()
    events = session.exec(
        select(DeviceEventRecord)
        .where(col(DeviceEventRecord.device_id) == device_id)
        .order_by(col(DeviceEventRecord.seq).desc())
        .limit(DETAIL_EVENTS)
    ).all()
    windows = session.connection().execute(
        telemetry_table.select()
        .where(telemetry_table.c.device_id == device_id)
        .order_by(telemetry_table.c.window_start.desc())
        .limit(DETAIL_TELEMETRY_WINDOWS)
    )
    certificate = session.exec(
        select(DeviceCertificate)
        .where(
            col(DeviceCertificate.device_id) == device_id,
            col(DeviceCertificate.revoked_at).is_(None),
        )
        .order_by(col(DeviceCertificate.issued_at).desc())
    ).first()
    return DeviceDetailView(
        summary=summary,
        assignments=[AssignmentView(a, m, v) for a, m, v in assignments],
        events=list(events),
        telemetry=[dict(window) for window in windows.mappings()],
        certificate=certificate,
    )


def update_labels(
    session: Session, *, device_id: str, set_labels: Mapping[str, str], remove: Sequence[str]
) -> DeviceView:
    """Set then remove labels; a key both set and removed is a contradiction (400)."""
    both = sorted(set(set_labels) & set(remove))
    if both:
        raise BadRequestError(f"labels both set and removed: {', '.join(both)}")
    verify_labels(set_labels)
    device = session.exec(
        select(DeviceRecord).where(col(DeviceRecord.id) == device_id).with_for_update()
    ).first()
    if device is None:
        raise NotFoundError(f"no device {device_id!r}")
    if device.decommissioned_at is not None:
        raise ConflictError(f"device {device_id!r} is decommissioned")
    labels = {k: v for k, v in device.labels.items() if k not in set(remove)}
    labels.update(set_labels)
    device.labels = labels
    session.add(device)
    session.flush()
    return get_device_summary(session, device_id=device_id)


def fleet_releases(session: Session) -> list[FleetReleaseRow]:
    """Which model versions the enrolled devices report running, with online counts."""
    online = func.sum(case((col(DeviceRecord.online), 1), else_=0))
    model, version = col(DeviceModelRecord.model_name), col(DeviceModelRecord.active_version)
    rows = session.exec(
        select(model, version, func.count(), online)
        .join(DeviceRecord, col(DeviceRecord.id) == col(DeviceModelRecord.device_id))
        .where(col(DeviceRecord.decommissioned_at).is_(None), version.is_not(None))
        .group_by(model, version)
        .order_by(model, version.desc())
    ).all()
    return [
        FleetReleaseRow(model=str(m), version=v, devices=int(n), online=int(up or 0))
        for m, v, n, up in rows
    ]


def fleet_phases(session: Session) -> list[PhaseCount]:
    """Enrolled devices by the update phase they last reported, with online counts."""
    online = func.sum(case((col(DeviceRecord.online), 1), else_=0))
    rows = session.exec(
        select(DeviceRecord.phase, func.count(), online)
        .where(col(DeviceRecord.decommissioned_at).is_(None))
        .group_by(col(DeviceRecord.phase))
    ).all()
    counts = [PhaseCount(phase=p, devices=int(n), online=int(up or 0)) for p, n, up in rows]
    # NULL sorts first on SQLite and last on PostgreSQL: order in Python, unknown last.
    return sorted(counts, key=lambda c: (c.phase is None, c.phase or ""))
