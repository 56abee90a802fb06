"""The fleet's devices as the API shows them: lists, details, labels, releases in use.

Invariants: reads never change a row; decommissioned devices are left out unless asked
for; label changes assign a new dict (JSON columns only notice assignment) and are
checked with the selectors' label rules, so every stored label can be selected.
Selectors are matched in Python over the rows the SQL filters leave, so a selector means
exactly what ``controller.devices.selectors`` says, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from ..errors import BadRequestError, ConflictError, NotFoundError
from ..registry.tables import ReleaseRecord
from ..rollouts.tables import RolloutAssignmentRecord, RolloutRecord
from .selectors import Selector, verify_labels
from .tables import DeviceEventRecord, DeviceRecord, telemetry_table

__all__ = [
    "DETAIL_EVENTS",
    "DETAIL_TELEMETRY_WINDOWS",
    "AssignmentView",
    "DeviceDetailView",
    "DeviceView",
    "FleetReleaseRow",
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


@dataclass(frozen=True)
class DeviceView:
    device: DeviceRecord
    desired_model: str | None
    desired_version: int | None


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


def _summaries_query() -> Any:
    return select(DeviceRecord, ReleaseRecord.model_name, ReleaseRecord.version).outerjoin(
        ReleaseRecord, col(DeviceRecord.desired_release_id) == col(ReleaseRecord.id)
    )


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
    """Devices by id; ``model``/``version`` filter on what a device reports running."""
    query = _summaries_query()
    if not include_decommissioned:
        query = query.where(col(DeviceRecord.decommissioned_at).is_(None))
    if online is not None:
        query = query.where(col(DeviceRecord.online) == online)
    if model is not None:
        query = query.where(col(DeviceRecord.active_model) == model)
    if version is not None:
        query = query.where(col(DeviceRecord.active_version) == version)
    query = query.order_by(col(DeviceRecord.id))
    if not selector.requirements:
        rows: Iterable[Any] = session.exec(query.offset(offset).limit(limit))
        return [DeviceView(device, m, v) for device, m, v in rows]
    matched = (
        DeviceView(device, m, v)
        for device, m, v in session.exec(query)
        if selector.matches(device.labels)
    )
    views: list[DeviceView] = []
    for index, view in enumerate(matched):
        if index >= offset + limit:
            break
        if index >= offset:
            views.append(view)
    return views


def get_device_summary(session: Session, *, device_id: str) -> DeviceView:
    """One device's summary (decommissioned ones too)."""
    row = session.exec(_summaries_query().where(col(DeviceRecord.id) == device_id)).first()
    if row is None:
        raise NotFoundError(f"no device {device_id!r}")
    device, model, version = row
    return DeviceView(device, model, version)


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
    return DeviceDetailView(
        summary=summary,
        assignments=[AssignmentView(a, m, v) for a, m, v in assignments],
        events=list(events),
        telemetry=[dict(window) for window in windows.mappings()],
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
    rows = session.exec(
        select(
            DeviceRecord.active_model,
            DeviceRecord.active_version,
            func.count(),
            online,
        )
        .where(
            col(DeviceRecord.decommissioned_at).is_(None),
            col(DeviceRecord.active_model).is_not(None),
        )
        .group_by(col(DeviceRecord.active_model), col(DeviceRecord.active_version))
        .order_by(col(DeviceRecord.active_model), col(DeviceRecord.active_version).desc())
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
