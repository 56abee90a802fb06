"""The reconciler: keeps every device's desired state signed, fresh and on the broker.

Invariants, per (device, model):
- a deployment the device has not accepted yet (the sequence it reports for that model is
  below it) is signed again with a new sequence before half of its lifetime is left, so a
  device that was offline for longer than a deployment lives still gets its target when
  it returns;
- a deployment the device already accepted is never renewed: a new sequence for the
  same release would make the device install it again (or reinstall one it rolled back);
- a shadow order is never renewed: it is bounded in time, and a device that missed it
  is simply left out of the shadow stage;
- a removal is renewed only while the device still lists the model (``phase`` is set):
  once its state leaves the model out, the removal has nothing left to do;
- device rows are locked (skipping those another controller holds) before any of their
  models is signed, in device order, like every other writer of ``device_models``;
- renewing moves the rollout's assignment to the new sequence, so the device's final
  event still counts for the rollout.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, update
from sqlmodel import Session, col, select

from protocol import ProbationPolicy

from ..db import session_scope
from ..registry.tables import ReleaseRecord
from ..rollouts.codec import decode_probation
from ..rollouts.engine import FleetContext
from ..rollouts.tables import RolloutAssignmentRecord, RolloutRecord
from .desired import sign_deployment, sign_removal
from .tables import DeviceModelRecord, DeviceRecord

__all__ = ["renew_expiring_deployments"]

logger = logging.getLogger(__name__)

RENEW_BATCH = 200


def renew_expiring_deployments(fleet: FleetContext, *, now: datetime) -> int:
    """Sign fresh deployments for device models whose unaccepted deployment runs out soon."""
    renew_before = now + timedelta(seconds=fleet.settings.deployment_ttl_s / 2)
    renewed = 0
    with session_scope(fleet.engine) as session:
        due = session.exec(
            select(DeviceModelRecord)
            .join(DeviceRecord, col(DeviceRecord.id) == col(DeviceModelRecord.device_id))
            .where(
                col(DeviceRecord.decommissioned_at).is_(None),
                col(DeviceModelRecord.desired_envelope).is_not(None),
                col(DeviceModelRecord.desired_shadow).is_(False),
                or_(
                    col(DeviceModelRecord.desired_release_id).is_not(None),
                    and_(
                        col(DeviceModelRecord.desired_remove),
                        col(DeviceModelRecord.phase).is_not(None),
                    ),
                ),
                col(DeviceModelRecord.desired_expires_at) < renew_before,
                or_(
                    col(DeviceModelRecord.reported_sequence).is_(None),
                    col(DeviceModelRecord.reported_sequence)
                    < col(DeviceModelRecord.desired_sequence),
                ),
            )
            .order_by(col(DeviceModelRecord.device_id), col(DeviceModelRecord.model_name))
            .limit(RENEW_BATCH)
            .with_for_update(of=DeviceRecord, skip_locked=True)
        ).all()
        for row in due:
            if _renew(fleet, session, row, now=now):
                renewed += 1
    if renewed:
        logger.info("renewed %d deployments before they expire", renewed)
    return renewed


def _renew(fleet: FleetContext, session: Session, row: DeviceModelRecord, *, now: datetime) -> bool:
    old_sequence = row.desired_sequence
    rollout_id = row.desired_rollout_id
    if row.desired_remove:
        sign_removal(
            session,
            device_id=row.device_id,
            model=row.model_name,
            signer=fleet.signer,
            now=now,
            ttl_s=fleet.settings.deployment_ttl_s,
        )
        return True
    release = session.get(ReleaseRecord, row.desired_release_id)
    if release is None:
        return False
    sequence = sign_deployment(
        session,
        device_id=row.device_id,
        release=release,
        signer=fleet.signer,
        now=now,
        ttl_s=fleet.settings.deployment_ttl_s,
        rollout_id=rollout_id,
        rollback=row.desired_rollback,
        probation=_probation(session, rollout_id),
        mirrors=fleet.settings.artifact_mirrors,
    )
    if rollout_id is not None:
        session.execute(
            update(RolloutAssignmentRecord)
            .where(
                col(RolloutAssignmentRecord.rollout_id) == rollout_id,
                col(RolloutAssignmentRecord.device_id) == row.device_id,
                col(RolloutAssignmentRecord.deployment_sequence) == old_sequence,
            )
            .values(deployment_sequence=sequence)
        )
    return True


def _probation(session: Session, rollout_id: str | None) -> ProbationPolicy | None:
    if rollout_id is None:
        return None
    record = session.get(RolloutRecord, rollout_id)
    return None if record is None else decode_probation(record.policy)
