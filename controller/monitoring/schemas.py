"""What the alerts API accepts and returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..registry.schemas import MODEL_NAME_PATTERN

__all__ = ["AlertCapture", "AlertEpisodePublic", "AlertRuleCreate", "AlertRulePublic"]

Metric = Literal[
    "error_rate",
    "nonfinite_rate",
    "p95_latency_ms",
    "confidence_drop",
    "output_drift_psi",
    "input_drift_psi",
    "label_error_rate",
]


class AlertCapture(BaseModel):
    """Capture a firing rule turns on for the degraded release's devices, for ``for_s``."""

    model_config = ConfigDict(extra="forbid")

    below_confidence: float = Field(gt=0, le=1)
    per_hour: int = Field(default=20, ge=1, le=3600)
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1, le=1024 * 1024 * 1024)
    for_s: float = Field(default=86400.0, gt=0, le=30 * 86400.0)


class AlertRuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(pattern=MODEL_NAME_PATTERN, max_length=128)
    metric: Metric
    threshold: float = Field(allow_inf_nan=False)
    # The telemetry the rule reads: the last window_s seconds of every device.
    window_s: float = Field(default=600.0, ge=30.0, le=7 * 86400.0)
    min_devices: int = Field(default=1, ge=1, le=1_000_000)
    min_requests: int = Field(default=100, ge=1, le=10**9)
    capture: AlertCapture | None = None


class AlertEpisodePublic(BaseModel):
    id: int
    rule_id: str
    model: str
    version: int
    started_at: datetime
    ended_at: datetime | None
    value: float
    last_value: float | None
    evidence: dict[str, Any]


class AlertRulePublic(BaseModel):
    id: str
    model: str
    metric: Metric
    threshold: float
    window_s: float
    min_devices: int
    min_requests: int
    created_by: str
    created_at: datetime
    last_evaluated_at: datetime | None
    capture: AlertCapture | None = None
    firing: list[AlertEpisodePublic]  # the open episodes, one per degraded release
