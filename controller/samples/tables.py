"""The samples devices uploaded, and the capture orders signed for devices.

Invariants:
- a sample's primary key is the SHA-256 of its bytes, which are stored under that name
  (``store.SampleStore``), so the same sample uploaded twice is one row and one file;
- a capture order row holds the signed command as sent; the newest order (highest id)
  for a (device, model) is the one in force; ``published_at`` is None until the broker
  acknowledged it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from ..tables import timestamp_field

__all__ = ["CaptureOrderRecord", "SampleRecord"]


class SampleRecord(SQLModel, table=True):
    __tablename__ = "samples"

    sha256: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(max_length=64, index=True)
    model_name: str = Field(max_length=128, index=True)
    release_version: int | None = None
    captured_at: datetime = timestamp_field()
    received_at: datetime = timestamp_field()
    reason: str = Field(max_length=32)
    confidence: float | None = None
    size_bytes: int


class CaptureOrderRecord(SQLModel, table=True):
    __tablename__ = "capture_orders"

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64, index=True)
    model_name: str = Field(max_length=128, index=True)
    below_confidence: float
    rare_input_share: float | None = None
    per_hour: int
    max_bytes: int
    until: datetime = timestamp_field()
    off: bool = False
    # Who asked: "operator <name>", "alert <rule id>", "rollout <id>".
    source: str = Field(max_length=160)
    issued_at: datetime = timestamp_field()
    command_sequence: int
    envelope: str = Field(sa_column=Column(Text, nullable=False))
    published_at: datetime | None = timestamp_field(nullable=True)
