"""Registry tables: models, their versions and variants, and signed releases.

Invariants: a model's version numbers are never reused (``models.next_version`` only
grows); a version's artifact hash never changes; a version has at most one release.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from ..tables import timestamp_field

__all__ = ["ModelRecord", "ModelVersion", "ReleaseRecord"]


class ModelRecord(SQLModel, table=True):
    __tablename__ = "models"

    name: str = Field(primary_key=True, max_length=128)
    next_version: int = 1
    created_at: datetime = timestamp_field()


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
    # Where the version came from: {"source": "upload" | "mlflow", "source_uri", "run_id",
    # "experiment", "params", "metrics", "datasets", ...}; variants inherit their parent's.
    lineage: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_by: str = Field(max_length=128)
    created_at: datetime = timestamp_field()


class ReleaseRecord(SQLModel, table=True):
    __tablename__ = "releases"

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_versions.id", unique=True)
    model_name: str = Field(index=True, max_length=128)
    version: int
    sha256: str = Field(max_length=64)
    envelope: str = Field(sa_column=Column(Text, nullable=False))
    created_by: str = Field(max_length=128)
    created_at: datetime = timestamp_field()
