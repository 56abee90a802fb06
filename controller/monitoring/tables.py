"""Alert rules and their episodes.

Invariants:
- an episode is open (``ended_at`` None) for at most one (rule, version) at a time: it is
  opened and closed only by ``alerts.evaluate_alerts`` while it holds the rule's row lock;
- an episode opens once (one ``model_degraded`` event) and closes once (one
  ``model_recovered`` event), whatever the number of evaluations in between.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from ..tables import timestamp_field

__all__ = ["AlertEpisode", "AlertRule"]


class AlertRule(SQLModel, table=True):
    __tablename__ = "alert_rules"

    id: str = Field(primary_key=True, max_length=32)
    model_name: str = Field(max_length=128, index=True)
    # One of rules.METRICS; the alert fires when the metric is above the threshold.
    metric: str = Field(max_length=32)
    threshold: float
    window_s: float
    min_devices: int
    min_requests: int
    created_by: str = Field(max_length=128)
    created_at: datetime = timestamp_field()
    last_evaluated_at: datetime | None = timestamp_field(nullable=True)
    # Sample capture turned on for the degraded release's devices when the rule fires
    # (``schemas.AlertCapture`` as JSON); None: the rule captures nothing.
    capture: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class AlertEpisode(SQLModel, table=True):
    __tablename__ = "alert_episodes"

    id: int | None = Field(default=None, primary_key=True)
    rule_id: str = Field(max_length=32, index=True)
    model_name: str = Field(max_length=128)
    version: int
    started_at: datetime = timestamp_field()
    ended_at: datetime | None = timestamp_field(nullable=True)
    value: float  # the metric when it fired
    last_value: float | None = None
    # What the degraded webhook said: figures, devices (see alerts.evidence).
    evidence: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
