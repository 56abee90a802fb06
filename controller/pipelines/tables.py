"""Channels, the pipelines that carry a version through them, and the jobs table.

Invariants: a channel has at most one pipeline past ``queued`` and not finished at a time
(``pipelines.advance`` starts the next only when none is); a job is run by one worker at a
time (claimed in a transaction, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and a claim
whose worker stopped beating is given to another; a finished job never changes again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from ..tables import timestamp_field

__all__ = ["ChannelRecord", "JobRecord", "PipelineRecord"]


class ChannelRecord(SQLModel, table=True):
    __tablename__ = "channels"

    name: str = Field(primary_key=True, max_length=64)
    selector: str = Field(max_length=512)
    # Variant modes tried in order; the first the quality gate accepts is released. None:
    # the version itself is released.
    variants: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # The rollout policy and probation, as ``rollouts.codec.encode_policy`` writes them.
    policy: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    approval_required: bool = False
    paused: bool = False
    created_by: str = Field(max_length=128)
    created_at: datetime = timestamp_field()


class PipelineRecord(SQLModel, table=True):
    __tablename__ = "pipelines"

    id: str = Field(primary_key=True, max_length=32)
    channel: str = Field(foreign_key="channels.name", index=True, max_length=64)
    model_name: str = Field(max_length=128)
    # The version pushed or imported into the channel.
    source_version: int
    # queued | running | waiting_approval | rolling_out | completed | stopped | superseded
    status: str = Field(max_length=24, index=True)
    # variants | quality_gate | approval | release | rollout | done
    step: str = Field(max_length=24)
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The version the pipeline chose to release (the source or one of its variants).
    release_version: int | None = None
    rollout_id: str | None = Field(default=None, max_length=32)
    # The job the current step waits for.
    job_id: int | None = None
    # What each step did: [{"step", "status", "at", "detail"}], oldest first.
    history: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    approved_by: str | None = Field(default=None, max_length=128)
    approved_at: datetime | None = timestamp_field(nullable=True)
    created_by: str = Field(max_length=128)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


class JobRecord(SQLModel, table=True):
    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    # variant | release | evaluate
    kind: str = Field(max_length=32)
    args: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # queued | running | succeeded | failed
    status: str = Field(default="queued", max_length=16, index=True)
    progress: str = Field(default="queued", max_length=256)
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The HTTP status an API caller gets for the failure (422 refused model, 409 conflict…).
    error_status: int | None = None
    worker: str | None = Field(default=None, max_length=128)
    attempts: int = 0
    heartbeat_at: datetime | None = timestamp_field(nullable=True)
    created_by: str = Field(max_length=128)
    created_at: datetime = timestamp_field()
    finished_at: datetime | None = timestamp_field(nullable=True)
