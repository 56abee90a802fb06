"""Fleet tables: devices, enrollment, rollouts, and what devices report.

Invariants:
- a device's deployment and command sequences only grow; each is allocated under the
  device row's lock, so two controller processes never sign the same sequence;
- ``devices.desired_*`` is the truth about what a device should run: the broker's
  retained copy is republished from it, never the other way round;
- a rollout targets a device at most once (UNIQUE(rollout_id, device_id)), so replaying a
  plan after a crash cannot apply a wave twice;
- device events are stored once per (device_id, seq), telemetry windows once per
  (device_id, model, window_start), whatever MQTT redelivers and however many
  controllers read it;
- enrollment tokens are stored as SHA-256 and used at most once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel

from .tables import utcnow

__all__ = [
    "DeviceEventRecord",
    "DeviceRecord",
    "EnrollmentToken",
    "RolloutAssignmentRecord",
    "RolloutCommandRecord",
    "RolloutEventRecord",
    "RolloutRecord",
    "telemetry_table",
]


def _timestamp(*, nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class EnrollmentToken(SQLModel, table=True):
    __tablename__ = "enrollment_tokens"

    id: str = Field(primary_key=True, max_length=32)
    secret_sha256: str = Field(max_length=64)
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # The device id to give; None lets the device propose one (or get a generated one).
    device_id: str | None = Field(default=None, max_length=64)
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    used_at: datetime | None = _timestamp(nullable=True)
    used_by: str | None = Field(default=None, max_length=64)
    created_by: str = Field(max_length=128)
    created_at: datetime = _timestamp()


class DeviceRecord(SQLModel, table=True):
    __tablename__ = "devices"

    id: str = Field(primary_key=True, max_length=64)
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # PBKDF2-SHA512 in Mosquitto's "$7$" format, so a password file can be exported as is.
    mqtt_password_hash: str = Field(max_length=256)
    # The API token the device downloads artifacts with (role "device").
    api_token_id: str | None = Field(default=None, max_length=32)
    enrolled_at: datetime = _timestamp()
    decommissioned_at: datetime | None = _timestamp(nullable=True)

    # Reported by the device (its retained state and its will).
    online: bool = False
    last_seen_at: datetime | None = _timestamp(nullable=True)
    phase: str | None = Field(default=None, max_length=64)
    agent_version: str | None = Field(default=None, max_length=64)
    active_model: str | None = Field(default=None, max_length=128)
    active_version: int | None = None
    active_sha256: str | None = Field(default=None, max_length=64)
    previous_version: int | None = None
    reported_sequence: int | None = None
    reported_state: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))

    # What the device should run: the last deployment signed for it.
    next_deployment_sequence: int = 1
    next_command_sequence: int = 1
    desired_release_id: int | None = Field(default=None, foreign_key="releases.id")
    desired_rollout_id: str | None = Field(default=None, max_length=32)
    desired_rollback: bool = False
    desired_sequence: int | None = None
    desired_expires_at: datetime | None = _timestamp(nullable=True)
    desired_envelope: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The sequence last handed to the broker; below desired_sequence means "publish again".
    published_sequence: int | None = None


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
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()
    planned_at: datetime | None = _timestamp(nullable=True)


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
    created_at: datetime = _timestamp()


class RolloutEventRecord(SQLModel, table=True):
    """What the planner decided, for history and webhooks (delivered at least once)."""

    __tablename__ = "rollout_events"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str | None = Field(default=None, index=True, max_length=32)
    device_id: str | None = Field(default=None, max_length=64)
    kind: str = Field(max_length=32)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    at: datetime = _timestamp()
    # pending | delivered | failed (after the last attempt) | none (no webhook wanted it)
    webhook_status: str = Field(default="pending", max_length=16, index=True)
    webhook_attempts: int = 0


class DeviceEventRecord(SQLModel, table=True):
    __tablename__ = "device_events"

    device_id: str = Field(primary_key=True, max_length=64)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    type: str = Field(max_length=64)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    received_at: datetime = _timestamp()
    deployment_sequence: int | None = None
    model_name: str | None = Field(default=None, max_length=128)
    version: int | None = None
    reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


# Telemetry is written in batches with SQLAlchemy Core, so it is a plain Table.
telemetry_table = Table(
    "telemetry",
    SQLModel.metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("device_id", String(64), ForeignKey("devices.id"), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("version", Integer, nullable=True),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_s", Float, nullable=False),
    Column("requests", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("nonfinite", Integer, nullable=False),
    Column("p50_ms", Float, nullable=True),
    Column("p95_ms", Float, nullable=True),
    Column("p99_ms", Float, nullable=True),
    Column("confidence_mean", Float, nullable=True),
    Column("max_drift_psi", Float, nullable=True),
    # Windows merged by downsampling (1 when stored as the device sent it).
    Column("merged", Integer, nullable=False, default=1),
    UniqueConstraint("device_id", "model_name", "window_start", name="uq_telemetry_window"),
    Index("ix_telemetry_window_start", "window_start"),
)
