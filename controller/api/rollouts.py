"""Rollouts: create, inspect, and steer (pause, resume, abort, promote).

Commands are queued here and applied by the rollout loop within ``plan_interval_s``;
the answer says which command id to look for in the rollout's events.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status

from ..rollouts.core import CommandKind
from ..rollouts.records import (
    create_rollout,
    describe_rollout,
    get_rollout,
    list_rollouts,
    queue_command,
    rollout_summary,
)
from ..rollouts.schemas import CommandQueued, RolloutCreate, RolloutDetail, RolloutSummary
from .deps import Audited, DbSession, Operator, Viewer

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["rollouts"])

RolloutId = Annotated[str, Path(pattern=r"^ro-[0-9a-f]{1,32}$")]


@router.post("/rollouts", status_code=status.HTTP_201_CREATED, dependencies=[Audited])
def post_rollout(
    body: RolloutCreate, request: Request, session: DbSession, caller: Operator
) -> RolloutDetail:
    """Start rolling a release out, in waves, to the devices the selector matches."""
    model, _, version = body.release.partition(":")
    policy = body.policy()  # a bad wave list or duration is a RolloutSpecError: 400
    record = create_rollout(
        session,
        model=model,
        version=int(version),
        selector=body.selector,
        policy=policy,
        probation=body.probation,
        actor=caller.name,
        capture=body.capture,
    )
    request.state.audit = {"target": record.id, "release": body.release, "selector": body.selector}
    return describe_rollout(session, record)


@router.get("/rollouts")
def get_rollouts(
    session: DbSession,
    _caller: Viewer,
    status_is: Annotated[str | None, Query(alias="status", max_length=16)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
) -> list[RolloutSummary]:
    """Rollouts, newest first."""
    return [
        rollout_summary(session, record)
        for record in list_rollouts(session, status=status_is, model=model)
    ]


@router.get("/rollouts/{rollout_id}")
def get_one_rollout(rollout_id: RolloutId, session: DbSession, _caller: Viewer) -> RolloutDetail:
    """A rollout with its waves, outcomes, last gate values, judgements and events."""
    return describe_rollout(session, get_rollout(session, rollout_id))


@router.post("/rollouts/{rollout_id}/{kind}", dependencies=[Audited])
def post_command(
    rollout_id: RolloutId, kind: CommandKind, request: Request, session: DbSession, caller: Operator
) -> CommandQueued:
    """Queue pause, resume, abort or promote; the rollout loop applies it in order, once."""
    command = queue_command(session, rollout_id=rollout_id, kind=kind, actor=caller.name)
    request.state.audit = {"target": rollout_id, "command": kind.value}
    return CommandQueued(rollout_id=rollout_id, command_id=command.id or 0, kind=kind)
