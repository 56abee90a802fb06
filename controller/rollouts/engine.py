"""The rollout loop's step: load a rollout, observe the fleet, plan, store, in one transaction.

Invariants:
- one rollout is planned by one controller at a time: its row is claimed with
  ``SELECT … FOR UPDATE SKIP LOCKED`` (SQLite serialises writers with BEGIN IMMEDIATE), so
  replicas share the work and never plan the same rollout twice at once;
- the new state, its assignments (UNIQUE(rollout, device)), the signed deployments and the
  events for webhooks are written in the same transaction as the plan that made them: a
  crash loses all of a step or none of it, and replanning from the stored state assigns
  nothing twice (the planner's own invariant);
- a rollout reads and writes only its own model's ``device_models`` rows: what devices run
  of other models is neither its control group nor its business, so rollouts of
  different models proceed side by side on the same devices (deployment sequences come
  from one per-device counter, so their assignments never share a sequence);
- publishing happens after the commit, from ``device_models.desired_*`` (see ``desired``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_
from sqlmodel import Session, col, select

from protocol import ProbationPolicy, ReleaseRef

from ..db import session_scope
from ..devices.desired import DeploymentSigner, clear_desired, sign_deployment, sign_shadow
from ..devices.selectors import parse_selector
from ..devices.tables import DeviceModelRecord, DeviceRecord
from ..monitoring.schemas import AlertCapture
from ..registry.tables import ReleaseRecord
from ..samples.capture import order_capture
from ..settings import Settings
from .codec import decode_policy, decode_probation, decode_state, encode_gates, encode_state
from .core import (
    AssignDevices,
    Assignment,
    CommandKind,
    DeviceOutcome,
    DeviceReport,
    DeviceView,
    EmitEvent,
    FleetHealth,
    Observations,
    OperatorCommand,
    Plan,
    RollbackDevices,
    RolloutState,
    ShadowDevices,
    ShadowHealth,
    StopShadow,
    health_groups,
    plan,
)
from .health import fleet_health
from .references import release_reference_profile
from .shadow_health import shadow_health
from .tables import RolloutAssignmentRecord, RolloutCommandRecord, RolloutEventRecord, RolloutRecord

__all__ = [
    "PLANNED_STATUSES",
    "WEBHOOK_KINDS",
    "FleetContext",
    "active_rollout_ids",
    "plan_rollout",
]

logger = logging.getLogger(__name__)

# Rollouts the loop still plans: completed ones keep adding devices that match later.
PLANNED_STATUSES = ("pending", "shadow", "running", "soaking", "paused", "completed")
WEBHOOK_KINDS = frozenset(
    {
        "rollout_paused",
        "rollout_aborted",
        "rollout_completed",
        "device_rolled_back",
        # Written by controller.monitoring.alerts, with no rollout.
        "model_degraded",
        "model_recovered",
        # Written by controller.pipelines.runs, for a channel's pipeline.
        "pipeline_stopped",
        "release_waiting_approval",
    }
)


@dataclass(frozen=True)
class FleetContext:
    """What the fleet loops need: settings, the database and what signs deployments."""

    settings: Settings
    engine: Engine
    signer: DeploymentSigner


def active_rollout_ids(engine: Engine) -> list[str]:
    with Session(engine) as session:
        ids = session.exec(
            select(RolloutRecord.id)
            .where(col(RolloutRecord.status).in_(PLANNED_STATUSES))
            .order_by(col(RolloutRecord.created_at))
        ).all()
    return list(ids)


def plan_rollout(fleet: FleetContext, rollout_id: str, *, now_s: float) -> Plan | None:
    """Plan one rollout and store the result; None when another controller holds it."""
    health = _measure_health(fleet, rollout_id)
    with session_scope(fleet.engine) as session:
        record = session.exec(
            select(RolloutRecord)
            .where(RolloutRecord.id == rollout_id, col(RolloutRecord.status).in_(PLANNED_STATUSES))
            .with_for_update(skip_locked=True)
        ).first()
        if record is None:
            return None
        state, rows = _load_state(session, record)
        if health is None or health.key != _health_key(state):
            return None  # another controller moved the rollout on meanwhile: measure again
        observations = _observe(session, record, state, rows, health)
        result = plan(state, observations, now_s=now_s)
        _store(fleet, session, record, result, rows, now_s=now_s)
        return result


@dataclass(frozen=True)
class _Health:
    """Telemetry of the rollout's groups, measured before the rollout is locked.

    It is read first because on SQLite the locked transaction holds the only write lock,
    which every other connection (telemetry reads included) would wait for. ``key`` ties
    the figures to the state they were measured for.
    """

    key: tuple[int, float | None, int, int]
    new: FleetHealth | None
    control: FleetHealth | None
    shadow: ShadowHealth | None = None


def _health_key(state: RolloutState) -> tuple[int, float | None, int, int]:
    return (state.wave, state.wave_started_s, len(state.assignments), len(state.shadow_devices))


def _load_state(
    session: Session, record: RolloutRecord
) -> tuple[RolloutState, list[RolloutAssignmentRecord]]:
    rows = list(
        session.exec(
            select(RolloutAssignmentRecord)
            .where(RolloutAssignmentRecord.rollout_id == record.id)
            .order_by(col(RolloutAssignmentRecord.id))
        ).all()
    )
    policy = decode_policy(record.policy)
    assignments = tuple(Assignment(r.device_id, r.wave, r.assigned_at_s) for r in rows)
    return decode_state(record.state, policy, assignments), rows


def _matching_devices(session: Session, record: RolloutRecord) -> tuple[DeviceView, ...]:
    """Devices the selector matches, each with the release of the rollout's model it runs."""
    selector = parse_selector(record.selector)
    return tuple(
        DeviceView(
            device.id,
            device.online,
            _reported_release(record.model_name, model),
            update_pending=_update_pending(model),
        )
        for device, model in session.exec(
            select(DeviceRecord, DeviceModelRecord)
            .outerjoin(
                DeviceModelRecord,
                and_(
                    col(DeviceModelRecord.device_id) == col(DeviceRecord.id),
                    col(DeviceModelRecord.model_name) == record.model_name,
                ),
            )
            .where(col(DeviceRecord.decommissioned_at).is_(None))
            .order_by(col(DeviceRecord.id))
        ).all()
        if selector.matches(device.labels)
    )


def _measure_health(fleet: FleetContext, rollout_id: str) -> _Health | None:
    with session_scope(fleet.engine) as session:
        record = session.get(RolloutRecord, rollout_id)
        if record is None:
            return None
        state, _rows = _load_state(session, record)
        devices = _matching_devices(session, record)
    key = _health_key(state)
    if state.shadow_running and state.shadow_started_s is not None:
        shadow = shadow_health(
            fleet.engine,
            device_ids=state.shadow_devices,
            model=state.release.model,
            version=state.release.version,
            since=datetime.fromtimestamp(state.shadow_started_s, UTC),
        )
        return _Health(key, None, None, shadow)
    if state.wave_started_s is None:
        return _Health(key, None, None)
    since = datetime.fromtimestamp(state.wave_started_s, UTC)
    new, control = health_groups(
        devices, assigned=state.assigned_ids, release=state.release, last_good=state.last_good
    )
    artifacts = fleet.settings.artifacts_dir
    new_health = fleet_health(
        fleet.engine,
        device_ids=new,
        model=state.release.model,
        version=state.release.version,
        since=since,
        reference=release_reference_profile(
            fleet.engine, artifacts, model=state.release.model, version=state.release.version
        ),
    )
    control_health = None
    if state.last_good is not None:
        control_health = fleet_health(
            fleet.engine,
            device_ids=control,
            model=state.last_good.model,
            version=state.last_good.version,
            since=since,
            reference=release_reference_profile(
                fleet.engine,
                artifacts,
                model=state.last_good.model,
                version=state.last_good.version,
            ),
        )
    return _Health(key, new_health, control_health)


def _observe(
    session: Session,
    record: RolloutRecord,
    state: RolloutState,
    rows: Sequence[RolloutAssignmentRecord],
    health: _Health,
) -> Observations:
    reports = {
        row.device_id: DeviceReport(DeviceOutcome(row.outcome), row.reported_at_s)
        if row.outcome != DeviceOutcome.PENDING
        else DeviceReport(DeviceOutcome.PENDING)
        for row in rows
    }
    commands = tuple(
        OperatorCommand(command.id or 0, CommandKind(command.kind))
        for command in session.exec(
            select(RolloutCommandRecord)
            .where(
                RolloutCommandRecord.rollout_id == record.id,
                col(RolloutCommandRecord.id) > state.last_command_id,
            )
            .order_by(col(RolloutCommandRecord.id))
        ).all()
    )
    devices = _matching_devices(session, record)
    return Observations(devices, reports, health.new, health.control, commands, health.shadow)


def _update_pending(row: DeviceModelRecord | None) -> bool:
    """A release or removal of the model is signed for the device and not yet accepted."""
    if row is None or row.desired_sequence is None or row.desired_shadow:
        return False
    return row.reported_sequence is None or row.reported_sequence < row.desired_sequence


def _reported_release(model: str, row: DeviceModelRecord | None) -> ReleaseRef | None:
    if row is None or row.active_version is None or row.active_sha256 is None:
        return None
    return ReleaseRef(model=model, version=row.active_version, sha256=row.active_sha256)


def _store(
    fleet: FleetContext,
    session: Session,
    record: RolloutRecord,
    result: Plan,
    rows: Sequence[RolloutAssignmentRecord],
    *,
    now_s: float,
) -> None:
    now = datetime.fromtimestamp(now_s, UTC)
    by_device = {row.device_id: row for row in rows}
    for assignment in result.state.assignments[len(rows) :]:
        row = RolloutAssignmentRecord(
            rollout_id=record.id,
            device_id=assignment.device_id,
            wave=assignment.wave,
            assigned_at_s=assignment.assigned_at_s,
        )
        session.add(row)
        by_device[assignment.device_id] = row
    probation = decode_probation(record.policy)
    for action in result.actions:
        if isinstance(action, AssignDevices):
            release = _release(session, record.release_id)
            for device_id in action.device_ids:
                by_device[device_id].deployment_sequence = _sign(
                    fleet, session, device_id, release, record.id, probation, now, rollback=False
                )
            _order_capture(fleet, session, record, action.device_ids, now)
        elif isinstance(action, RollbackDevices):
            _roll_back(fleet, session, record, action, by_device, probation, now)
        elif isinstance(action, ShadowDevices | StopShadow):
            _order_shadows(fleet, session, record, action, now)
        elif isinstance(action, EmitEvent):
            session.add(_event_record(fleet.settings, action))
    record.state = encode_state(result.state)
    record.status = result.state.status.value
    record.wave = result.state.wave
    if result.gates:
        record.last_gates = encode_gates(result.gates)
    record.notes = list(result.notes)
    record.planned_at = now
    if result.actions:
        record.updated_at = now
        logger.info(
            "rollout %s: %s, wave %d, %d actions",
            record.id,
            record.status,
            record.wave,
            len(result.actions),
        )
    session.add(record)


def _roll_back(
    fleet: FleetContext,
    session: Session,
    record: RolloutRecord,
    action: RollbackDevices,
    by_device: dict[str, RolloutAssignmentRecord],
    probation: ProbationPolicy,
    now: datetime,
) -> None:
    last_good = (
        None
        if record.last_good_release_id is None
        else _release(session, record.last_good_release_id)
    )
    for device_id in action.device_ids:
        if last_good is None:
            clear_desired(session, device_id=device_id, model=record.model_name)
        else:
            _sign(fleet, session, device_id, last_good, record.id, probation, now, rollback=True)
        row = by_device.get(device_id)
        if row is not None:
            row.rolled_back_by_rollout = True
            session.add(row)


def _order_capture(
    fleet: FleetContext,
    session: Session,
    record: RolloutRecord,
    device_ids: Sequence[str],
    now: datetime,
) -> None:
    """Turn capture on for devices the rollout assigns, when the rollout opted in."""
    stored = record.policy.get("capture")
    if not stored:
        return
    capture = AlertCapture.model_validate(stored)
    order_capture(
        session,
        fleet.signer,
        device_ids,
        model=record.model_name,
        below_confidence=capture.below_confidence,
        per_hour=capture.per_hour,
        max_bytes=capture.max_bytes,
        until=now + timedelta(seconds=capture.for_s),
        source=f"rollout {record.id}",
        now=now,
    )


def _order_shadows(
    fleet: FleetContext,
    session: Session,
    record: RolloutRecord,
    action: ShadowDevices | StopShadow,
    now: datetime,
) -> None:
    """Sign each device's order to start (or stop) shadowing the rollout's release."""
    starting = isinstance(action, ShadowDevices)
    candidate = _release(session, record.release_id) if starting else None
    until = (
        datetime.fromtimestamp(action.until_s, UTC) if isinstance(action, ShadowDevices) else None
    )
    fraction = action.max_cpu_fraction if isinstance(action, ShadowDevices) else 0.2
    for device_id in action.device_ids:
        sign_shadow(
            session,
            device_id=device_id,
            model=record.model_name,
            candidate=candidate,
            until=until,
            max_cpu_fraction=fraction,
            signer=fleet.signer,
            now=now,
            ttl_s=fleet.settings.deployment_ttl_s,
            rollout_id=record.id,
        )


def _sign(
    fleet: FleetContext,
    session: Session,
    device_id: str,
    release: ReleaseRecord,
    rollout_id: str,
    probation: ProbationPolicy,
    now: datetime,
    *,
    rollback: bool,
) -> int:
    return sign_deployment(
        session,
        device_id=device_id,
        release=release,
        signer=fleet.signer,
        now=now,
        ttl_s=fleet.settings.deployment_ttl_s,
        rollout_id=rollout_id,
        rollback=rollback,
        probation=probation,
        mirrors=fleet.settings.artifact_mirrors,
    )


def _release(session: Session, release_id: int) -> ReleaseRecord:
    release = session.get(ReleaseRecord, release_id)
    if release is None:  # a foreign key guarantees it; say so loudly if it ever breaks
        raise LookupError(f"release {release_id} is gone")
    return release


def _event_record(settings: Settings, event: EmitEvent) -> RolloutEventRecord:
    details: dict[str, Any] = dict(event.details)
    wanted = event.kind.value in WEBHOOK_KINDS and settings.webhook_urls
    return RolloutEventRecord(
        rollout_id=str(details.get("rollout_id")),
        kind=event.kind.value,
        details=details,
        webhook_status="pending" if wanted else "none",
    )
