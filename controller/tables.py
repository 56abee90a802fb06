"""Database tables. The DB holds the truth; files hold only content-addressed bytes.

Invariants: a model's version numbers are never reused (``models.next_version`` only
grows); a version's artifact hash never changes; the audit log is append-only and each
row's hash covers the previous row's hash.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = [
    "ApiToken",
    "AuditEntry",
    "AuditHead",
    "ModelRecord",
    "ModelVersion",
    "ReleaseRecord",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _timestamp() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class ModelRecord(SQLModel, table=True):
    __tablename__ = "models"

    name: str = Field(primary_key=True, max_length=128)
    next_version: int = 1
    created_at: datetime = _timestamp()


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(foreign_key="models.name", index=True, max_length=128)
    version: int
    parent_id: int | None = Field(default=None, foreign_key="model_versions.id")
    # "upload" for a pushed model, "variant" for one a converter derived.
    origin: str = Field(max_length=16)
    variant_mode: str | None = Field(default=None, max_length=32)
    # "registered" (upload), "accepted" or "rejected" (variants, by the gate).
    status: str = Field(max_length=16)
    format: str = Field(max_length=16)
    sha256: str = Field(max_length=64, index=True)
    size_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    opset: int | None = None
    producer: str | None = Field(default=None, max_length=256)
    inputs: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    outputs: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    validation_sha256: str | None = Field(default=None, max_length=64)
    report: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    reasons: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    notes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(max_length=128)
    created_at: datetime = _timestamp()


class ReleaseRecord(SQLModel, table=True):
    __tablename__ = "releases"

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_versions.id", unique=True)
    model_name: str = Field(index=True, max_length=128)
    version: int
    sha256: str = Field(max_length=64)
    envelope: str = Field(sa_column=Column(Text, nullable=False))
    created_by: str = Field(max_length=128)
    created_at: datetime = _timestamp()


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    role: str = Field(max_length=16)
    secret_sha256: str = Field(max_length=64)
    created_at: datetime = _timestamp()
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"

    seq: int = Field(primary_key=True)
    at: datetime = _timestamp()
    actor: str = Field(max_length=128)
    role: str = Field(max_length=16)
    action: str = Field(max_length=64)
    target: str = Field(max_length=256)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    prev_sha256: str = Field(max_length=64)
    sha256: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """One row: the last audit entry. Locked to append, so the chain never forks."""

    __tablename__ = "audit_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    sha256: str = Field(default="0" * 64, max_length=64)
