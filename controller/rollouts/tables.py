"""Rollout tables: rollouts, the devices each targets, operator commands, planner events.

Invariants:
- a rollout targets a device at most once (UNIQUE(rollout_id, device_id)), so replaying a
  plan after a crash cannot apply a wave twice;
- the planner's state is stored with the rollout, its assignments as rows of
  ``rollout_assignments``; commands wait in ``rollout_commands`` for the rollout loop.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Float, UniqueConstraint
from sqlmodel import Field, SQLModel

from ..tables import timestamp_field

__all__ = [
    "RolloutAssignmentRecord",
    "RolloutCommandRecord",
    "RolloutEventRecord",
    "RolloutRecord",
]


class RolloutRecord(SQLModel, table=True):
    __tablename__ = "rollouts"

    id: str = Field(primary_key=True, max_length=32)
    release_id: int = Field(foreign_key="releases.id")
    model_name: str = Field(max_length=128, index=True)
    last_good_release_id: int | None = Field(default=None, foreign_key="releases.id")
    selector: str = Field(max_length=1024)
    policy: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    # The planner's state but its assignments (they are rows of rollout_assignments).
    state: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=16, index=True)
    wave: int = 0
    # The gates of the last judged wave, and what the planner waits for, for status views.
    last_gates: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    notes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(max_length=128)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()
    planned_at: datetime | None = timestamp_field(nullable=True)


class RolloutAssignmentRecord(SQLModel, table=True):
    __tablename__ = "rollout_assignments"
    __table_args__ = (UniqueConstraint("rollout_id", "device_id"),)

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(foreign_key="rollouts.id", index=True, max_length=32)
    device_id: str = Field(foreign_key="devices.id", index=True, max_length=64)
    wave: int
    assigned_at_s: float = Field(sa_column=Column(Float, nullable=False))
    deployment_sequence: int | None = None
    # pending | committed | committed_unobserved | failed | rolled_back (protocol words).
    outcome: str = Field(default="pending", max_length=32)
    reason: str | None = Field(default=None, max_length=256)
    probation: str | None = Field(default=None, max_length=32)
    reported_at_s: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    # Set when an abort ordered the device back to the rollout's last good release.
    rolled_back_by_rollout: bool = False


class RolloutCommandRecord(SQLModel, table=True):
    __tablename__ = "rollout_commands"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(foreign_key="rollouts.id", index=True, max_length=32)
    kind: str = Field(max_length=16)
    actor: str = Field(max_length=128)
    created_at: datetime = timestamp_field()


class RolloutEventRecord(SQLModel, table=True):
    """What the planner decided, for history and webhooks (delivered at least once)."""

    __tablename__ = "rollout_events"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str | None = Field(default=None, index=True, max_length=32)
    device_id: str | None = Field(default=None, max_length=64)
    kind: str = Field(max_length=32)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    at: datetime = timestamp_field()
    # pending | delivered | failed (after the last attempt) | none (no webhook wanted it)
    webhook_status: str = Field(default="pending", max_length=16, index=True)
    webhook_attempts: int = 0
