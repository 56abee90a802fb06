"""Device tables: enrolled devices, enrollment tokens, and what devices report.

Invariants:
- a device's deployment and command sequences only grow; each is allocated under the
  device row's lock, so two controller processes never sign the same sequence;
- ``device_models.desired_*`` is the truth about what a device should run, one row per
  (device, model): the broker's retained copy is republished from it, never the other
  way round; ``devices.desired_sequence`` is the newest sequence signed for the device
  (any model) and ``devices.published_sequence`` the one whose desired state the broker
  holds;
- a ``device_models`` row is written only under its device row's lock, so the device row
  serialises every writer of the device's models (lock the device first, then models);
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

from ..tables import timestamp_field

__all__ = [
    "DeviceCertificate",
    "DeviceEventRecord",
    "DeviceModelRecord",
    "DeviceRecord",
    "EnrollmentToken",
    "telemetry_table",
]


class EnrollmentToken(SQLModel, table=True):
    __tablename__ = "enrollment_tokens"

    id: str = Field(primary_key=True, max_length=32)
    secret_sha256: str = Field(max_length=64)
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # The device id to give; None lets the device propose one (or get a generated one).
    device_id: str | None = Field(default=None, max_length=64)
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    used_at: datetime | None = timestamp_field(nullable=True)
    used_by: str | None = Field(default=None, max_length=64)
    created_by: str = Field(max_length=128)
    created_at: datetime = timestamp_field()


class DeviceRecord(SQLModel, table=True):
    __tablename__ = "devices"

    id: str = Field(primary_key=True, max_length=64)
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # PBKDF2-SHA512 in Mosquitto's "$7$" format, so a password file can be exported as is.
    mqtt_password_hash: str = Field(max_length=256)
    # The same password as bcrypt, the hash NATS takes (``edgefleet devices nats-config``);
    # None for a device enrolled before it was kept: it must enroll again to use NATS.
    nats_password_hash: str | None = Field(default=None, max_length=64)
    # The API token the device downloads artifacts with (role "device").
    api_token_id: str | None = Field(default=None, max_length=32)
    enrolled_at: datetime = timestamp_field()
    decommissioned_at: datetime | None = timestamp_field(nullable=True)

    # Reported by the device (its retained state and its will).
    online: bool = False
    last_seen_at: datetime | None = timestamp_field(nullable=True)
    phase: str | None = Field(default=None, max_length=64)
    agent_version: str | None = Field(default=None, max_length=64)
    reported_state: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))

    # One counter for the deployments of all the device's models, so (device, sequence)
    # names one deployment; what each model should run is in ``device_models``.
    next_deployment_sequence: int = 1
    next_command_sequence: int = 1
    # The newest deployment sequence signed for the device, whatever its model.
    desired_sequence: int | None = None
    # The sequence last handed to the broker; below desired_sequence means "publish again".
    published_sequence: int | None = None


class DeviceCertificate(SQLModel, table=True):
    """A client certificate issued to a device at enrollment (``controller.ca``).

    The brokers accept a certificate only while its row has no ``revoked_at`` and its
    device is enrolled: decommissioning and re-enrollment revoke the device's rows, and the
    Mosquitto CRL lists the revoked ones that have not expired yet.
    """

    __tablename__ = "device_certificates"

    serial: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(max_length=64, index=True)
    # SHA-256 of the certificate's DER: what a TLS peer presents, looked up at login.
    sha256: str = Field(max_length=64, unique=True)
    issued_at: datetime = timestamp_field()
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    revoked_at: datetime | None = timestamp_field(nullable=True)


class DeviceModelRecord(SQLModel, table=True):
    """One model on one device: what it should run (desired) and what it reports.

    A row exists while the controller has signed a deployment of the model for the device
    or the device lists the model in its state. ``phase`` is None when the device's last
    state does not list the model (never installed, or removed).
    """

    __tablename__ = "device_models"

    device_id: str = Field(primary_key=True, max_length=64, foreign_key="devices.id")
    model_name: str = Field(primary_key=True, max_length=128)

    # The newest deployment signed for this model on this device.
    desired_release_id: int | None = Field(default=None, foreign_key="releases.id")
    desired_rollout_id: str | None = Field(default=None, max_length=32)
    desired_rollback: bool = False
    desired_remove: bool = False
    # The desired deployment orders a shadow (or stops one): serving is unchanged, and it
    # is never renewed (a shadow is bounded in time; a device that missed it is left out).
    desired_shadow: bool = False
    desired_sequence: int | None = None
    desired_expires_at: datetime | None = timestamp_field(nullable=True)
    desired_envelope: str | None = Field(default=None, sa_column=Column(Text, nullable=True))

    # Reported by the device (its state's entry for this model).
    phase: str | None = Field(default=None, max_length=64)
    active_version: int | None = None
    active_sha256: str | None = Field(default=None, max_length=64)
    previous_version: int | None = None
    last_good_version: int | None = None
    reported_sequence: int | None = None


class DeviceEventRecord(SQLModel, table=True):
    __tablename__ = "device_events"

    device_id: str = Field(primary_key=True, max_length=64)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    type: str = Field(max_length=64)
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    received_at: datetime = timestamp_field()
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
    # The latency histogram (protocol.histograms buckets) as a JSON list of counts, so a
    # group's percentiles are read from all its requests; None from older agents.
    Column("latency_counts", Text, nullable=True),
    # Live values per reference-profile bin, per tensor: a JSON object of lists, pooled
    # like the latency counts so a group's drift is one PSI over all its values.
    Column("drift_counts", Text, nullable=True),
    # Requests whose true class the application sent back, and how many were right.
    Column("labeled", Integer, nullable=False, default=0, server_default="0"),
    Column("labeled_correct", Integer, nullable=False, default=0, server_default="0"),
    # How a shadow model compared over the window (protocol.ShadowWindow as JSON), and
    # the shadow's version, to read one candidate's windows.
    Column("shadow", Text, nullable=True),
    Column("shadow_version", Integer, nullable=True),
    # Windows merged by downsampling (1 when stored as the device sent it).
    Column("merged", Integer, nullable=False, default=1),
    UniqueConstraint("device_id", "model_name", "window_start", name="uq_telemetry_window"),
    Index("ix_telemetry_window_start", "window_start"),
)
