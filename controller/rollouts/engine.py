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
from typing import Any, NamedTuple

from sqlalchemy import Engine, and_, insert, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from protocol import ProbationPolicy, ReleaseRef

from ..db import session_scope
from ..devices.desired import (
    LOCK_CHUNK,
    DeploymentSigner,
    clear_desired,
    sign_deployments,
    sign_shadow,
)
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
    """What the fleet loops need: settings, the database and what signs deployments.

    ``read_engine`` serves reads outside any write (``controller.db.reader_engine``): on
    SQLite its transactions begin deferred, so measuring a rollout or building messages
    to publish never takes the one write lock that ingest and planning wait for.
    """

    settings: Settings
    engine: Engine
    signer: DeploymentSigner
    read_engine: Engine | None = None

    @property
    def reader(self) -> Engine:
        return self.read_engine if self.read_engine is not None else self.engine


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
    # The devices the selector matches, read with the figures: reading them again under
    # the lock would see no more consistent a fleet (reports keep arriving either way).
    devices: tuple[DeviceView, ...]
    new: FleetHealth | None
    control: FleetHealth | None
    shadow: ShadowHealth | None = None


class _AssignmentRow(NamedTuple):
    """What the loop reads of a stored assignment: plain columns, no ORM object."""

    device_id: str
    wave: int
    assigned_at_s: float
    outcome: str
    reported_at_s: float | None


def _health_key(state: RolloutState) -> tuple[int, float | None, int, int]:
    return (state.wave, state.wave_started_s, len(state.assignments), len(state.shadow_devices))


def _load_state(
    session: Session, record: RolloutRecord
) -> tuple[RolloutState, list[_AssignmentRow]]:
    table = RolloutAssignmentRecord.__table__  # type: ignore[attr-defined]
    rows = [
        _AssignmentRow(*row)
        for row in session.execute(
            sa_select(
                table.c.device_id,
                table.c.wave,
                table.c.assigned_at_s,
                table.c.outcome,
                table.c.reported_at_s,
            )
            .where(table.c.rollout_id == record.id)
            .order_by(table.c.id)
        ).all()  # fetched at once: row by row costs more than the rows
    ]
    policy = decode_policy(record.policy)
    assignments = tuple(Assignment(r.device_id, r.wave, r.assigned_at_s) for r in rows)
    return decode_state(record.state, policy, assignments), rows


def _matching_devices(session: Session, record: RolloutRecord) -> tuple[DeviceView, ...]:
    """Devices the selector matches, each with the release of the rollout's model it runs.

    Reads the few columns it needs as plain rows: at 10,000 devices, ORM objects (labels,
    reported state and all) cost most of a planning pass.
    """
    selector = parse_selector(record.selector)
    devices = DeviceRecord.__table__  # type: ignore[attr-defined]
    models = DeviceModelRecord.__table__  # type: ignore[attr-defined]
    query = (
        sa_select(
            devices.c.id,
            devices.c.online,
            devices.c.labels,
            models.c.active_version,
            models.c.active_sha256,
            models.c.desired_sequence,
            models.c.desired_shadow,
            models.c.reported_sequence,
        )
        .select_from(
            devices.outerjoin(
                models,
                and_(models.c.device_id == devices.c.id, models.c.model_name == record.model_name),
            )
        )
        .where(devices.c.decommissioned_at.is_(None))
        .order_by(devices.c.id)
    )
    return tuple(
        DeviceView(
            device_id,
            bool(online),
            _reported_release(record.model_name, active_version, active_sha256),
            update_pending=_update_pending(desired_sequence, desired_shadow, reported_sequence),
        )
        for (
            device_id,
            online,
            labels,
            active_version,
            active_sha256,
            desired_sequence,
            desired_shadow,
            reported_sequence,
        ) in session.execute(query).all()
        if selector.matches(labels or {})
    )


def _measure_health(fleet: FleetContext, rollout_id: str) -> _Health | None:
    with session_scope(fleet.reader) as session:
        record = session.get(RolloutRecord, rollout_id)
        if record is None:
            return None
        state, _rows = _load_state(session, record)
        devices = _matching_devices(session, record)
    key = _health_key(state)
    if state.shadow_running and state.shadow_started_s is not None:
        shadow = shadow_health(
            fleet.reader,
            device_ids=state.shadow_devices,
            model=state.release.model,
            version=state.release.version,
            since=datetime.fromtimestamp(state.shadow_started_s, UTC),
        )
        return _Health(key, devices, None, None, shadow)
    if state.wave_started_s is None:
        return _Health(key, devices, None, None)
    since = datetime.fromtimestamp(state.wave_started_s, UTC)
    new, control = health_groups(
        devices, assigned=state.assigned_ids, release=state.release, last_good=state.last_good
    )
    artifacts = fleet.settings.artifacts_dir
    new_health = fleet_health(
        fleet.reader,
        device_ids=new,
        model=state.release.model,
        version=state.release.version,
        since=since,
        reference=release_reference_profile(
            fleet.reader, artifacts, model=state.release.model, version=state.release.version
        ),
    )
    control_health = None
    if state.last_good is not None:
        control_health = fleet_health(
            fleet.reader,
            device_ids=control,
            model=state.last_good.model,
            version=state.last_good.version,
            since=since,
            reference=release_reference_profile(
                fleet.reader,
                artifacts,
                model=state.last_good.model,
                version=state.last_good.version,
            ),
        )
    return _Health(key, devices, new_health, control_health)


def _observe(
    session: Session,
    record: RolloutRecord,
    state: RolloutState,
    rows: Sequence[_AssignmentRow],
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
    return Observations(
        health.devices, reports, health.new, health.control, commands, health.shadow
    )


def _update_pending(
    desired_sequence: int | None, desired_shadow: bool | None, reported_sequence: int | None
) -> bool:
    """A release or removal of the model is signed for the device and not yet accepted."""
    if desired_sequence is None or desired_shadow:
        return False
    return reported_sequence is None or reported_sequence < desired_sequence


def _reported_release(
    model: str, active_version: int | None, active_sha256: str | None
) -> ReleaseRef | None:
    if active_version is None or active_sha256 is None:
        return None
    return ReleaseRef(model=model, version=active_version, sha256=active_sha256)


def _store(
    fleet: FleetContext,
    session: Session,
    record: RolloutRecord,
    result: Plan,
    rows: Sequence[_AssignmentRow],
    *,
    now_s: float,
) -> None:
    """Write the plan: new assignments and their signed deployments in bulk (a wave may
    hold every device of the fleet), the rollout's new state, its events."""
    now = datetime.fromtimestamp(now_s, UTC)
    new_rows = {
        assignment.device_id: {
            "rollout_id": record.id,
            "device_id": assignment.device_id,
            "wave": assignment.wave,
            "assigned_at_s": assignment.assigned_at_s,
            "deployment_sequence": None,
            "outcome": DeviceOutcome.PENDING.value,
            "reason": None,
            "probation": None,
            "reported_at_s": None,
            "rolled_back_by_rollout": False,
        }
        for assignment in result.state.assignments[len(rows) :]
    }
    rolled_back: list[str] = []
    probation = decode_probation(record.policy)
    for action in result.actions:
        if isinstance(action, AssignDevices):
            sequences = sign_deployments(
                session,
                device_ids=action.device_ids,
                release=_release(session, record.release_id),
                signer=fleet.signer,
                now=now,
                ttl_s=fleet.settings.deployment_ttl_s,
                rollout_id=record.id,
                probation=probation,
                mirrors=fleet.settings.artifact_mirrors,
            )
            for device_id, sequence in sequences.items():
                new_rows[device_id]["deployment_sequence"] = sequence
            _order_capture(fleet, session, record, action.device_ids, now)
        elif isinstance(action, RollbackDevices):
            _roll_back(fleet, session, record, action, probation, now)
            rolled_back.extend(action.device_ids)
        elif isinstance(action, ShadowDevices | StopShadow):
            _order_shadows(fleet, session, record, action, now)
        elif isinstance(action, EmitEvent):
            session.add(_event_record(fleet.settings, action))
    table = RolloutAssignmentRecord.__table__  # type: ignore[attr-defined]
    connection = session.connection()
    if new_rows:
        connection.execute(insert(table), list(new_rows.values()))
    for first in range(0, len(rolled_back), LOCK_CHUNK):
        connection.execute(
            update(table)
            .where(
                table.c.rollout_id == record.id,
                table.c.device_id.in_(rolled_back[first : first + LOCK_CHUNK]),
            )
            .values(rolled_back_by_rollout=True)
        )
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
    probation: ProbationPolicy,
    now: datetime,
) -> None:
    if record.last_good_release_id is None:
        for device_id in action.device_ids:
            clear_desired(session, device_id=device_id, model=record.model_name)
        return
    sign_deployments(
        session,
        device_ids=action.device_ids,
        release=_release(session, record.last_good_release_id),
        signer=fleet.signer,
        now=now,
        ttl_s=fleet.settings.deployment_ttl_s,
        rollout_id=record.id,
        rollback=True,
        probation=probation,
        mirrors=fleet.settings.artifact_mirrors,
    )


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
