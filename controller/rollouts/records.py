"""Rollouts as the API sees them: create one, queue an operator command, describe one.

Invariants:
- one unfinished rollout per model (pending, running, soaking or paused): a second is a
  conflict, so two rollouts never fight over the same device model; rollouts of
  different models may run at once on the same devices; a new rollout supersedes
  the model's completed ones (they stop adding late joiners);
- ``last_good`` is fixed at creation: the release of the model's last completed rollout,
  else the release of the model most matching devices report as their last good one (the
  one they run when they report none);
- operator commands are rows the loop applies in id order, each once (the planner keeps
  ``last_command_id``), so a command survives a controller restart and is never doubled.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from protocol import ProbationPolicy

from ..devices.selectors import parse_selector
from ..devices.tables import DeviceModelRecord, DeviceRecord
from ..errors import ConflictError, NotFoundError
from ..monitoring.schemas import AlertCapture
from ..registry.releases import get_release
from ..registry.tables import ReleaseRecord
from .codec import decode_policy, encode_policy, encode_state, release_ref
from .core import CommandKind, RolloutPolicy, RolloutState, wave_targets
from .schemas import RolloutDetail, RolloutEventPublic, RolloutSummary, WavePublic
from .tables import RolloutAssignmentRecord, RolloutCommandRecord, RolloutEventRecord, RolloutRecord

__all__ = [
    "UNFINISHED_STATUSES",
    "create_rollout",
    "describe_rollout",
    "get_rollout",
    "list_rollouts",
    "queue_command",
    "rollout_summary",
]

UNFINISHED_STATUSES = ("pending", "shadow", "running", "soaking", "paused")
FINISHED_STATUSES = ("aborted", "superseded")


def create_rollout(
    session: Session,
    *,
    model: str,
    version: int,
    selector: str,
    policy: RolloutPolicy,
    probation: ProbationPolicy,
    actor: str,
    capture: AlertCapture | None = None,
) -> RolloutRecord:
    release = get_release(session, model, version)
    parsed = parse_selector(selector)
    running = session.exec(
        select(RolloutRecord).where(
            RolloutRecord.model_name == model,
            col(RolloutRecord.status).in_(UNFINISHED_STATUSES),
        )
    ).first()
    if running is not None:
        raise ConflictError(
            f"rollout {running.id} of {model} is still {running.status}: "
            "abort it or let it finish first"
        )
    last_good = _last_good(session, release, str(parsed))
    rollout_id = f"ro-{secrets.token_hex(6)}"
    state = RolloutState(
        rollout_id=rollout_id,
        release=release_ref(release),
        last_good=None if last_good is None else release_ref(last_good),
        policy=policy,
    )
    for completed in session.exec(
        select(RolloutRecord).where(
            RolloutRecord.model_name == model, RolloutRecord.status == "completed"
        )
    ).all():
        completed.status = "superseded"
        session.add(completed)
    record = RolloutRecord(
        id=rollout_id,
        release_id=release.id or 0,
        model_name=model,
        last_good_release_id=None if last_good is None else last_good.id,
        selector=str(parsed),
        policy={
            **encode_policy(policy, probation),
            "capture": None if capture is None else capture.model_dump(mode="json"),
        },
        state=encode_state(state),
        status=state.status.value,
        created_by=actor,
    )
    session.add(record)
    session.flush()
    return record


def _last_good(session: Session, release: ReleaseRecord, selector: str) -> ReleaseRecord | None:
    previous = session.exec(
        select(RolloutRecord)
        .where(
            RolloutRecord.model_name == release.model_name,
            col(RolloutRecord.status).in_(("completed", "superseded")),
            RolloutRecord.release_id != release.id,
        )
        .order_by(col(RolloutRecord.created_at).desc())
    ).first()
    if previous is not None:
        return session.get(ReleaseRecord, previous.release_id)
    matcher = parse_selector(selector)
    running: Counter[int] = Counter()
    for labels, last_good, active in session.exec(
        select(
            DeviceRecord.labels,
            DeviceModelRecord.last_good_version,
            DeviceModelRecord.active_version,
        )
        .join(DeviceModelRecord, col(DeviceModelRecord.device_id) == col(DeviceRecord.id))
        .where(
            DeviceModelRecord.model_name == release.model_name,
            col(DeviceRecord.decommissioned_at).is_(None),
        )
    ).all():
        version = last_good if last_good is not None else active
        if version is not None and version != release.version and matcher.matches(labels):
            running[version] += 1
    if not running:
        return None
    version, _count = running.most_common(1)[0]
    return session.exec(
        select(ReleaseRecord).where(
            ReleaseRecord.model_name == release.model_name, ReleaseRecord.version == version
        )
    ).first()


def get_rollout(session: Session, rollout_id: str) -> RolloutRecord:
    record = session.get(RolloutRecord, rollout_id)
    if record is None:
        raise NotFoundError(f"no rollout {rollout_id!r}")
    return record


def list_rollouts(
    session: Session, *, status: str | None = None, model: str | None = None
) -> list[RolloutRecord]:
    query = select(RolloutRecord).order_by(col(RolloutRecord.created_at).desc())
    if status is not None:
        query = query.where(RolloutRecord.status == status)
    if model is not None:
        query = query.where(RolloutRecord.model_name == model)
    return list(session.exec(query).all())


def queue_command(
    session: Session, *, rollout_id: str, kind: CommandKind, actor: str
) -> RolloutCommandRecord:
    record = get_rollout(session, rollout_id)
    if record.status in FINISHED_STATUSES:
        raise ConflictError(f"rollout {rollout_id} is {record.status}: it takes no commands")
    command = RolloutCommandRecord(rollout_id=rollout_id, kind=kind.value, actor=actor)
    session.add(command)
    session.flush()
    return command


def describe_rollout(session: Session, record: RolloutRecord) -> RolloutDetail:
    """Everything an operator reads about a rollout: waves, outcomes, gates, events."""
    policy = decode_policy(record.policy)
    matching = _matching_count(session, record.selector)
    targets = wave_targets(policy.waves, matching)
    outcomes = _outcomes_by_wave(session, record.id)
    pending_commands = session.exec(
        select(func.count())
        .select_from(RolloutCommandRecord)
        .where(
            RolloutCommandRecord.rollout_id == record.id,
            col(RolloutCommandRecord.id) > int(record.state.get("last_command_id", 0)),
        )
    ).one()
    events = session.exec(
        select(RolloutEventRecord)
        .where(RolloutEventRecord.rollout_id == record.id)
        .order_by(col(RolloutEventRecord.id).desc())
        .limit(50)
    ).all()
    return RolloutDetail.model_validate(
        {
            **rollout_summary(session, record).model_dump(),
            "policy": record.policy,
            "matching_devices": matching,
            "waves": [
                WavePublic(
                    wave=index,
                    size=str(quota),
                    target=targets[index],
                    outcomes=outcomes.get(index, {}),
                )
                for index, quota in enumerate(policy.waves)
            ],
            "gates": record.last_gates,
            "judgements": record.state.get("judgements", []),
            "shadow": _shadow_stage(record.state),
            "notes": record.notes,
            "pending_commands": int(pending_commands),
            "events": [
                RolloutEventPublic(id=e.id, kind=e.kind, at=e.at.isoformat(), details=e.details)
                for e in events
            ],
        }
    )


def _shadow_stage(state: dict[str, Any]) -> dict[str, Any] | None:
    started = state.get("shadow_started_s")
    if started is None:
        return None
    judgement = state.get("shadow_judgement")
    return {
        "devices": state.get("shadow_devices", []),
        "started_at_s": started,
        "running": judgement is None,
        "promoted": state.get("shadow_promoted", False),
        "judgement": judgement,
    }


def rollout_summary(session: Session, record: RolloutRecord) -> RolloutSummary:
    """``summarize_rollout`` with the rollout's release and last good release looked up."""
    release = session.get(ReleaseRecord, record.release_id)
    last_good = (
        session.get(ReleaseRecord, record.last_good_release_id)
        if record.last_good_release_id is not None
        else None
    )
    return summarize_rollout(record, release, last_good)


def summarize_rollout(
    record: RolloutRecord, release: ReleaseRecord | None, last_good: ReleaseRecord | None
) -> RolloutSummary:
    return RolloutSummary(
        id=record.id,
        release=_ref_text(release),
        last_good=_ref_text(last_good),
        selector=record.selector,
        status=record.status,
        wave=record.wave,
        created_by=record.created_by,
        created_at=_iso(record.created_at),
        updated_at=_iso(record.updated_at),
    )


def _ref_text(release: ReleaseRecord | None) -> str | None:
    return None if release is None else f"{release.model_name}:{release.version}"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _matching_count(session: Session, selector: str) -> int:
    matcher = parse_selector(selector)
    labels = session.exec(
        select(DeviceRecord.labels).where(col(DeviceRecord.decommissioned_at).is_(None))
    ).all()
    return sum(1 for device_labels in labels if matcher.matches(device_labels))


def _outcomes_by_wave(session: Session, rollout_id: str) -> Mapping[int, dict[str, int]]:
    rows = session.exec(
        select(RolloutAssignmentRecord.wave, RolloutAssignmentRecord.outcome, func.count())
        .where(RolloutAssignmentRecord.rollout_id == rollout_id)
        .group_by(col(RolloutAssignmentRecord.wave), col(RolloutAssignmentRecord.outcome))
    ).all()
    by_wave: dict[int, dict[str, int]] = {}
    for wave, outcome, count in rows:
        by_wave.setdefault(wave, {})[outcome] = int(count)
    return by_wave
