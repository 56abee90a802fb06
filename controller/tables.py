"""Tables every domain shares: API tokens and the audit log, and the timestamp column.

Each domain keeps its own tables (``registry.tables``, ``devices.tables``,
``rollouts.tables``); all register on ``SQLModel.metadata``, which the migrations use.
The DB holds the truth; files hold only content-addressed bytes.

Invariants: the audit log is append-only and each row's hash covers the previous row's
hash; a token's secret is stored only as its SHA-256.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field, SQLModel

__all__ = ["ApiToken", "AuditEntry", "AuditHead", "timestamp_field", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def timestamp_field(*, nullable: bool = False) -> Any:
    """A timezone-aware timestamp column: now by default, or nullable and None."""
    if nullable:
        return Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))
    return Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    role: str = Field(max_length=16)
    secret_sha256: str = Field(max_length=64)
    created_at: datetime = timestamp_field()
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    # None: the token lives until it is revoked.
    expires_at: datetime | None = timestamp_field(nullable=True)

    def is_live(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        if self.revoked_at is not None:
            return False
        expires = self.expires_at
        if expires is None:
            return True
        return now < (expires if expires.tzinfo else expires.replace(tzinfo=UTC))


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"

    seq: int = Field(primary_key=True)
    at: datetime = timestamp_field()
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
