"""Alert rules on each release's fleet health, and their episodes (``controller.monitoring``).

An episode opens with a ``model_degraded`` webhook and closes with ``model_recovered``;
``docs/operations.md`` shows how to start a retraining job from them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status
from sqlmodel import Session, col, select

from ..monitoring.alerts import create_rule, delete_rule
from ..monitoring.schemas import (
    AlertCapture,
    AlertEpisodePublic,
    AlertRuleCreate,
    AlertRulePublic,
)
from ..monitoring.tables import AlertEpisode, AlertRule
from .deps import Audited, DbSession, Operator, Viewer

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["alerts"])

RuleId = Annotated[str, Path(pattern=r"^ar-[0-9a-f]{1,24}$")]
MAX_EPISODES = 500


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC).
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _episode(row: AlertEpisode) -> AlertEpisodePublic:
    return AlertEpisodePublic(
        id=row.id or 0,
        rule_id=row.rule_id,
        model=row.model_name,
        version=row.version,
        started_at=_utc(row.started_at),
        ended_at=_utc(row.ended_at) if row.ended_at else None,
        value=row.value,
        last_value=row.last_value,
        evidence=row.evidence,
    )


def _rule(session: Session, rule: AlertRule) -> AlertRulePublic:
    open_episodes = session.exec(
        select(AlertEpisode)
        .where(AlertEpisode.rule_id == rule.id, col(AlertEpisode.ended_at).is_(None))
        .order_by(col(AlertEpisode.version))
    ).all()
    return AlertRulePublic(
        id=rule.id,
        model=rule.model_name,
        metric=rule.metric,
        threshold=rule.threshold,
        window_s=rule.window_s,
        min_devices=rule.min_devices,
        min_requests=rule.min_requests,
        created_by=rule.created_by,
        created_at=_utc(rule.created_at),
        last_evaluated_at=_utc(rule.last_evaluated_at) if rule.last_evaluated_at else None,
        capture=AlertCapture.model_validate(rule.capture) if rule.capture else None,
        firing=[_episode(episode) for episode in open_episodes],
    )


@router.post("/alert-rules", status_code=status.HTTP_201_CREATED, dependencies=[Audited])
def post_alert_rule(
    body: AlertRuleCreate, request: Request, session: DbSession, caller: Operator
) -> AlertRulePublic:
    """Alert when ``metric`` of any release of ``model`` goes above ``threshold``."""
    rule = create_rule(
        session,
        model=body.model,
        metric=body.metric,
        threshold=body.threshold,
        window_s=body.window_s,
        min_devices=body.min_devices,
        min_requests=body.min_requests,
        actor=caller.name,
        capture=body.capture.model_dump() if body.capture is not None else None,
    )
    request.state.audit = {"target": rule.id, **body.model_dump()}
    return _rule(session, rule)


@router.get("/alert-rules")
def get_alert_rules(
    session: DbSession,
    _caller: Viewer,
    model: Annotated[str | None, Query(max_length=128)] = None,
) -> list[AlertRulePublic]:
    """Alert rules (with their open episodes), by id."""
    query = select(AlertRule).order_by(col(AlertRule.id))
    if model is not None:
        query = query.where(AlertRule.model_name == model)
    return [_rule(session, rule) for rule in session.exec(query).all()]


@router.delete("/alert-rules/{rule_id}", dependencies=[Audited])
def delete_alert_rule(
    rule_id: RuleId, request: Request, session: DbSession, _caller: Operator
) -> dict[str, str]:
    """Delete a rule; its open episodes close without a webhook."""
    delete_rule(session, rule_id)
    request.state.audit = {"target": rule_id}
    return {"deleted": rule_id}


@router.get("/alerts")
def get_alerts(
    session: DbSession,
    _caller: Viewer,
    model: Annotated[str | None, Query(max_length=128)] = None,
    open_only: Annotated[bool, Query(alias="open")] = False,
    limit: Annotated[int, Query(ge=1, le=MAX_EPISODES)] = 100,
) -> list[AlertEpisodePublic]:
    """Alert episodes, newest first: what degraded, when, with the evidence."""
    query = select(AlertEpisode).order_by(col(AlertEpisode.id).desc()).limit(limit)
    if model is not None:
        query = query.where(AlertEpisode.model_name == model)
    if open_only:
        query = query.where(col(AlertEpisode.ended_at).is_(None))
    return [_episode(row) for row in session.exec(query).all()]
