"""Channels: a version pushed or imported into one ships by its policy."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, status

from ..pipelines.runs import (
    approve_pipeline,
    channel_pipelines,
    create_channel,
    get_channel,
    get_pipeline,
    list_channels,
    set_channel_paused,
    waiting_pipeline,
)
from ..pipelines.schemas import (
    CHANNEL_NAME_PATTERN,
    ChannelCreate,
    ChannelPublic,
    PipelinePublic,
)
from .deps import Audited, DbSession, Operator, Viewer

router = APIRouter(prefix="/api/v1", tags=["channels"])

ChannelName = Annotated[str, Path(pattern=CHANNEL_NAME_PATTERN, description="The channel.")]
PipelineId = Annotated[str, Path(pattern=r"^pl-[0-9a-f]{12}$")]


@router.post("/channels", status_code=status.HTTP_201_CREATED, dependencies=[Audited])
def post_channel(
    body: ChannelCreate, request: Request, session: DbSession, caller: Operator
) -> ChannelPublic:
    """Create a channel: variants, the quality gate, approval and the rollout policy a
    version pushed or imported into it goes through by itself."""
    rollout = body.rollout
    channel = create_channel(
        session,
        name=body.name,
        selector=rollout.selector,
        variants=list(body.variants),
        policy=rollout.policy(),  # a bad wave list or duration: 400
        probation=rollout.probation,
        capture=None if rollout.capture is None else rollout.capture.model_dump(mode="json"),
        approval_required=body.approval == "required",
        actor=caller.name,
    )
    request.state.audit = {"target": channel.name, "selector": channel.selector}
    return ChannelPublic.of(channel, [])


@router.get("/channels")
def get_channels(session: DbSession, _caller: Viewer) -> list[ChannelPublic]:
    """Every channel with its latest pipelines."""
    return [
        ChannelPublic.of(channel, channel_pipelines(session, channel.name, limit=5))
        for channel in list_channels(session)
    ]


@router.get("/channels/{name}")
def get_one_channel(name: ChannelName, session: DbSession, _caller: Viewer) -> ChannelPublic:
    """A channel with its last 50 pipelines: each version's path and where it stopped."""
    return ChannelPublic.of(get_channel(session, name), channel_pipelines(session, name))


@router.post("/channels/{name}/pause", dependencies=[Audited])
def post_pause(
    name: ChannelName, request: Request, session: DbSession, _caller: Operator
) -> ChannelPublic:
    """Start no pipeline and take no further step until resumed."""
    channel = set_channel_paused(session, name, paused=True)
    request.state.audit = {"target": name}
    return ChannelPublic.of(channel, channel_pipelines(session, name))


@router.post("/channels/{name}/resume", dependencies=[Audited])
def post_resume(
    name: ChannelName, request: Request, session: DbSession, _caller: Operator
) -> ChannelPublic:
    channel = set_channel_paused(session, name, paused=False)
    request.state.audit = {"target": name}
    return ChannelPublic.of(channel, channel_pipelines(session, name))


@router.post("/channels/{name}/approve", dependencies=[Audited])
def post_approve_waiting(
    name: ChannelName, request: Request, session: DbSession, caller: Operator
) -> PipelinePublic:
    """Approve the release the channel's pipeline waits on (409 when none waits)."""
    pipeline = approve_pipeline(session, waiting_pipeline(session, name).id, actor=caller.name)
    request.state.audit = {"target": pipeline.id, "channel": name}
    return PipelinePublic.of(pipeline)


@router.get("/pipelines/{pipeline_id}")
def get_one_pipeline(
    pipeline_id: PipelineId, session: DbSession, _caller: Viewer
) -> PipelinePublic:
    return PipelinePublic.of(get_pipeline(session, pipeline_id))


@router.post("/pipelines/{pipeline_id}/approve", dependencies=[Audited])
def post_approve(
    pipeline_id: PipelineId, request: Request, session: DbSession, caller: Operator
) -> PipelinePublic:
    """Approve this pipeline's release (409 unless it waits for an approval)."""
    pipeline = approve_pipeline(session, pipeline_id, actor=caller.name)
    request.state.audit = {"target": pipeline.id, "channel": pipeline.channel}
    return PipelinePublic.of(pipeline)
