"""The reconciler: keeps every device's desired state signed, fresh and on the broker.

Invariants:
- a deployment the device has not accepted yet (its reported sequence is below it) is
  signed again with a new sequence before half of its lifetime is left, so a device that
  was offline for longer than a deployment lives still gets its target when it returns;
- a deployment the device already accepted is never renewed: a new sequence for the
  same release would make the device install it again (or reinstall one it rolled back);
- renewing moves the rollout's assignment to the new sequence, so the device's final
  event still counts for the rollout.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from protocol import ProbationPolicy

from ..db import session_scope
from ..registry.tables import ReleaseRecord
from ..rollouts.codec import decode_probation
from ..rollouts.engine import FleetContext
from ..rollouts.tables import RolloutAssignmentRecord, RolloutRecord
from .desired import sign_deployment
from .tables import DeviceRecord

__all__ = ["renew_expiring_deployments"]

logger = logging.getLogger(__name__)

RENEW_BATCH = 200


def renew_expiring_deployments(fleet: FleetContext, *, now: datetime) -> int:
    """Sign fresh deployments for devices whose unaccepted deployment runs out soon."""
    renew_before = now + timedelta(seconds=fleet.settings.deployment_ttl_s / 2)
    renewed = 0
    with session_scope(fleet.engine) as session:
        due = session.exec(
            select(DeviceRecord)
            .where(
                col(DeviceRecord.decommissioned_at).is_(None),
                col(DeviceRecord.desired_release_id).is_not(None),
                col(DeviceRecord.desired_expires_at) < renew_before,
                or_(
                    col(DeviceRecord.reported_sequence).is_(None),
                    col(DeviceRecord.reported_sequence) < col(DeviceRecord.desired_sequence),
                ),
            )
            .order_by(col(DeviceRecord.id))
            .limit(RENEW_BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        for device in due:
            release = session.get(ReleaseRecord, device.desired_release_id)
            if release is None:
                continue
            old_sequence = device.desired_sequence
            sequence = sign_deployment(
                session,
                device_id=device.id,
                release=release,
                key=fleet.deployment_key,
                now=now,
                ttl_s=fleet.settings.deployment_ttl_s,
                rollout_id=device.desired_rollout_id,
                rollback=device.desired_rollback,
                probation=_probation(session, device.desired_rollout_id),
            )
            if device.desired_rollout_id is not None:
                session.execute(
                    update(RolloutAssignmentRecord)
                    .where(
                        col(RolloutAssignmentRecord.rollout_id) == device.desired_rollout_id,
                        col(RolloutAssignmentRecord.device_id) == device.id,
                        col(RolloutAssignmentRecord.deployment_sequence) == old_sequence,
                    )
                    .values(deployment_sequence=sequence)
                )
            renewed += 1
    if renewed:
        logger.info("renewed %d deployments before they expire", renewed)
    return renewed


def _probation(session: Session, rollout_id: str | None) -> ProbationPolicy | None:
    if rollout_id is None:
        return None
    record = session.get(RolloutRecord, rollout_id)
    return None if record is None else decode_probation(record.policy)
