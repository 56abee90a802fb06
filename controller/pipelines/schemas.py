"""What the channels, pipelines and jobs API takes and answers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..registry.schemas import MODEL_NAME_PATTERN, VariantMode
from ..rollouts.schemas import RolloutPolicyIn
from .tables import ChannelRecord, JobRecord, PipelineRecord

__all__ = [
    "CHANNEL_NAME_PATTERN",
    "ChannelCreate",
    "ChannelPublic",
    "JobCreate",
    "JobPublic",
    "PipelinePublic",
]

CHANNEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class ChannelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=CHANNEL_NAME_PATTERN)
    # Tried in order; the first the quality gate accepts ships. Empty: the version itself.
    variants: list[VariantMode] = Field(default_factory=list, max_length=4)
    approval: Literal["required", "none"] = "none"
    # The rollout each pipeline starts: selector, waves, soak, gates, probation, shadow.
    rollout: RolloutPolicyIn = RolloutPolicyIn()


class VariantJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["variant"]
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    version: int = Field(ge=1, le=2**31 - 1)
    mode: VariantMode
    max_latency_ratio: float | None = Field(default=None, gt=0, le=100)


class ReleaseJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["release"]
    model: str = Field(pattern=MODEL_NAME_PATTERN)
    version: int = Field(ge=1, le=2**31 - 1)


JobCreate = Annotated[VariantJobCreate | ReleaseJobCreate, Field(discriminator="kind")]


class JobPublic(BaseModel):
    id: int
    kind: str
    args: dict[str, Any]
    status: str
    progress: str
    result: dict[str, Any] | None
    error: str | None
    error_status: int | None
    attempts: int
    created_by: str
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, job: JobRecord) -> JobPublic:
        return cls.model_validate(job.model_dump())


class PipelinePublic(BaseModel):
    id: str
    channel: str
    model: str
    source_version: int
    status: str
    step: str
    reason: str | None
    release_version: int | None
    rollout_id: str | None
    job_id: int | None
    approved_by: str | None
    approved_at: datetime | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    history: list[dict[str, Any]]

    @classmethod
    def of(cls, pipeline: PipelineRecord) -> PipelinePublic:
        return cls.model_validate({**pipeline.model_dump(), "model": pipeline.model_name})


class ChannelPublic(BaseModel):
    name: str
    selector: str
    variants: list[str]
    approval: Literal["required", "none"]
    paused: bool
    policy: dict[str, Any]
    created_by: str
    created_at: datetime
    pipelines: list[PipelinePublic] = Field(
        default_factory=list, description="newest first (the last 50)"
    )

    @classmethod
    def of(cls, channel: ChannelRecord, pipelines: list[PipelineRecord]) -> ChannelPublic:
        return cls(
            name=channel.name,
            selector=channel.selector,
            variants=channel.variants,
            approval="required" if channel.approval_required else "none",
            paused=channel.paused,
            policy=channel.policy,
            created_by=channel.created_by,
            created_at=channel.created_at,
            pipelines=[PipelinePublic.of(p) for p in pipelines],
        )
