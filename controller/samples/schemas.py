"""What the samples API accepts and returns."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from protocol import MAX_CAPTURE_BYTES, MAX_CAPTURE_PER_HOUR

from ..registry.schemas import MODEL_NAME_PATTERN

__all__ = [
    "CaptureOrderCreate",
    "CaptureOrderPublic",
    "CapturePublic",
    "SamplePublic",
    "SamplesDeleted",
]

# The longest a capture order may last.
MAX_CAPTURE_FOR_S = 30 * 86400.0


class SamplePublic(BaseModel):
    sha256: str
    device_id: str
    model: str
    release_version: int | None
    captured_at: datetime
    received_at: datetime
    reason: str
    confidence: float | None
    size_bytes: int
    url: str  # where to download it (GET, a viewer's token)


class SamplesDeleted(BaseModel):
    deleted: int


class CaptureOrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=MODEL_NAME_PATTERN, max_length=128)
    # Devices (label selector, empty: all) that run or are assigned the model.
    selector: str = ""
    below_confidence: float = Field(default=0.5, gt=0, le=1)
    # Also keep inputs this share of whose values is where the reference rarely was.
    rare_input_share: float | None = Field(default=None, gt=0, le=1)
    per_hour: int = Field(default=20, ge=1, le=MAX_CAPTURE_PER_HOUR)
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1, le=MAX_CAPTURE_BYTES)
    for_s: float = Field(default=86400.0, gt=0, le=MAX_CAPTURE_FOR_S)
    off: bool = False


class CapturePublic(BaseModel):
    device_id: str
    model: str
    until: datetime
    below_confidence: float
    rare_input_share: float | None
    per_hour: int
    max_bytes: int
    source: str


class CaptureOrderPublic(BaseModel):
    model: str
    off: bool
    until: datetime
    devices: list[str]
