"""Rollouts: create, inspect, and steer (pause, resume, abort, promote).

Commands are queued here and applied by the rollout loop within ``plan_interval_s``;
the answer says which command id to look for in the rollout's events.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from protocol import ProbationPolicy

from ..registry.tables import ReleaseRecord
from ..rollouts.core import (
    CommandKind,
    GateThresholds,
    OnFailure,
    RolloutPolicy,
    parse_duration,
    parse_quota,
    parse_waves,
)
from ..rollouts.records import (
    create_rollout,
    describe_rollout,
    get_rollout,
    list_rollouts,
    queue_command,
    summarize_rollout,
)
from .deps import Audited, DbSession, Operator, Viewer

__all__ = ["RolloutCreate", "router"]

router = APIRouter(prefix="/api/v1", tags=["rollouts"])

RolloutId = Annotated[str, Path(pattern=r"^ro-[0-9a-f]{1,32}$")]


class GatesIn(BaseModel):
    """Gate thresholds: the largest value each allows; null disables a gate."""

    model_config = ConfigDict(extra="forbid")

    max_failure_rate: float | None = Field(default=0.0, ge=0)
    max_rollback_rate: float | None = Field(default=0.0, ge=0)
    max_p95_latency_ratio: float | None = Field(default=1.5, ge=0)
    max_error_rate: float | None = Field(default=0.01, ge=0)
    max_nonfinite_rate: float | None = Field(default=0.0, ge=0)
    max_confidence_drop: float | None = Field(default=0.1, ge=0)
    max_drift_psi: float | None = Field(default=0.25, ge=0)
    min_health_requests: int = Field(default=100, ge=0)


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}:[1-9][0-9]{0,9}$")
    selector: str = Field(default="", max_length=1024)
    waves: str = Field(default="1,10%,50%,100%", max_length=1024)
    soak: str = Field(default="5m", max_length=32)
    min_reporting: str = Field(default="1", max_length=16)
    report_timeout: str = Field(default="30m", max_length=32)
    on_failure: OnFailure = OnFailure.ABORT
    require_observed: bool = False
    gates: GatesIn = GatesIn()
    probation: ProbationPolicy = ProbationPolicy()

    def policy(self) -> RolloutPolicy:
        return RolloutPolicy(
            waves=parse_waves(self.waves),
            soak_s=parse_duration(self.soak),
            min_reporting=parse_quota(self.min_reporting),
            report_timeout_s=parse_duration(self.report_timeout),
            on_failure=self.on_failure,
            require_observed=self.require_observed,
            gates=GateThresholds(**self.gates.model_dump()),
        )


class CommandQueued(BaseModel):
    rollout_id: str
    command_id: int
    kind: CommandKind


@router.post("/rollouts", status_code=status.HTTP_201_CREATED, dependencies=[Audited])
def post_rollout(
    body: RolloutCreate, request: Request, session: DbSession, caller: Operator
) -> dict[str, Any]:
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
    )
    request.state.audit = {"target": record.id, "release": body.release, "selector": body.selector}
    return describe_rollout(session, record)


@router.get("/rollouts")
def get_rollouts(
    session: DbSession,
    _caller: Viewer,
    status_is: Annotated[str | None, Query(alias="status", max_length=16)] = None,
    model: Annotated[str | None, Query(max_length=128)] = None,
) -> list[dict[str, Any]]:
    """Rollouts, newest first."""
    rows = []
    for record in list_rollouts(session, status=status_is, model=model):
        release = session.get(ReleaseRecord, record.release_id)
        last_good = (
            session.get(ReleaseRecord, record.last_good_release_id)
            if record.last_good_release_id is not None
            else None
        )
        rows.append(summarize_rollout(record, release, last_good))
    return rows


@router.get("/rollouts/{rollout_id}")
def get_one_rollout(rollout_id: RolloutId, session: DbSession, _caller: Viewer) -> dict[str, Any]:
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
