"""What the rollouts API accepts and returns: one schema family per resource.

``RolloutCreate`` is what an operator sends; ``RolloutSummary`` is a rollout in a list,
``RolloutDetail`` everything an operator reads about one. Times are ISO 8601 strings as
the database gives them back; the policy is the one stored with the rollout.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from protocol import DEFAULT_SHADOW_CPU_FRACTION, ProbationPolicy

from ..monitoring.schemas import AlertCapture
from .core import (
    CommandKind,
    GateThresholds,
    OnFailure,
    RolloutPolicy,
    ShadowPolicy,
    parse_duration,
    parse_quota,
    parse_waves,
)

__all__ = [
    "CommandQueued",
    "GatePublic",
    "GatesIn",
    "JudgementPublic",
    "RolloutCreate",
    "RolloutDetail",
    "RolloutEventPublic",
    "RolloutPolicyIn",
    "RolloutPolicyPublic",
    "RolloutSummary",
    "ShadowIn",
    "ShadowPolicyPublic",
    "ShadowStagePublic",
    "WavePublic",
]


class GatesIn(BaseModel):
    """Gate thresholds: the largest value each allows; null disables a gate."""

    model_config = ConfigDict(extra="forbid")

    max_failure_rate: float | None = Field(default=0.0, ge=0)
    max_rollback_rate: float | None = Field(default=0.0, ge=0)
    max_p95_latency_ratio: float | None = Field(default=1.5, ge=0)
    min_p95_latency_increase_ms: float = Field(default=1.0, ge=0)
    max_error_rate: float | None = Field(default=0.01, ge=0)
    max_nonfinite_rate: float | None = Field(default=0.0, ge=0)
    max_confidence_drop: float | None = Field(default=0.1, ge=0)
    max_drift_psi: float | None = Field(default=0.25, ge=0)
    max_label_accuracy_drop: float | None = Field(default=0.05, ge=0)
    min_health_requests: int = Field(default=100, ge=0)


class ShadowIn(BaseModel):
    """The shadow stage before the canary: how many devices run the release as a shadow of
    what they serve, for how long, and the gates it must pass (null disables one)."""

    model_config = ConfigDict(extra="forbid")

    devices: str = Field(default="1", max_length=16, description="a count or a percentage")
    duration: str = Field(default="10m", max_length=32)
    min_samples: int = Field(default=200, ge=0)
    max_cpu_fraction: float = Field(default=DEFAULT_SHADOW_CPU_FRACTION, gt=0, le=1)
    min_agreement: float | None = Field(default=0.98, ge=0, le=1)
    max_latency_ratio: float | None = Field(default=1.5, ge=0)
    max_error_rate: float | None = Field(default=0.0, ge=0)
    max_nonfinite_rate: float | None = Field(default=0.0, ge=0)
    max_confidence_drop: float | None = Field(default=0.1, ge=0)
    max_distance: float | None = Field(default=None, ge=0)

    def policy(self) -> ShadowPolicy:
        fields = self.model_dump(exclude={"devices", "duration"})
        return ShadowPolicy(
            devices=parse_quota(self.devices), duration_s=parse_duration(self.duration), **fields
        )


class RolloutPolicyIn(BaseModel):
    """How a rollout proceeds: a rollout's own, or the one a channel gives its rollouts."""

    model_config = ConfigDict(extra="forbid")

    selector: str = Field(default="", max_length=1024)
    waves: str = Field(default="1,10%,50%,100%", max_length=1024)
    soak: str = Field(default="5m", max_length=32)
    min_reporting: str = Field(default="1", max_length=16)
    report_timeout: str = Field(default="30m", max_length=32)
    on_failure: OnFailure = OnFailure.ABORT
    require_observed: bool = False
    gates: GatesIn = GatesIn()
    probation: ProbationPolicy = ProbationPolicy()
    shadow: ShadowIn | None = None
    # Capture inputs on every device the rollout assigns, as it is assigned (opt-in; the
    # same block as an alert rule's).
    capture: AlertCapture | None = None

    def policy(self) -> RolloutPolicy:
        """The core's policy; a bad wave list, quota or duration is a ``RolloutSpecError``."""
        return RolloutPolicy(
            waves=parse_waves(self.waves),
            soak_s=parse_duration(self.soak),
            min_reporting=parse_quota(self.min_reporting),
            report_timeout_s=parse_duration(self.report_timeout),
            on_failure=self.on_failure,
            require_observed=self.require_observed,
            gates=GateThresholds(**self.gates.model_dump()),
            shadow=None if self.shadow is None else self.shadow.policy(),
        )


class RolloutCreate(RolloutPolicyIn):
    release: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}:[1-9][0-9]{0,9}$")


class CommandQueued(BaseModel):
    rollout_id: str
    command_id: int
    kind: CommandKind


class RolloutSummary(BaseModel):
    """A rollout in a list: which release, where, how far."""

    id: str
    release: str | None = Field(description="MODEL:VERSION; null if the release is gone")
    last_good: str | None = Field(description="what an abort orders devices back to")
    selector: str
    status: str
    wave: int
    created_by: str
    created_at: str | None
    updated_at: str | None


class RolloutPolicyPublic(BaseModel):
    """The policy as stored with the rollout (durations in seconds)."""

    waves: str
    soak_s: float
    min_reporting: str
    report_timeout_s: float
    on_failure: OnFailure
    require_observed: bool
    gates: GatesIn
    probation: ProbationPolicy
    shadow: ShadowPolicyPublic | None = None
    capture: AlertCapture | None = None


class ShadowPolicyPublic(BaseModel):
    devices: str
    duration_s: float
    min_samples: int
    max_cpu_fraction: float
    min_agreement: float | None
    max_latency_ratio: float | None
    max_error_rate: float | None
    max_nonfinite_rate: float | None
    max_confidence_drop: float | None
    max_distance: float | None


class WavePublic(BaseModel):
    wave: int
    size: str = Field(description="as the policy says it: a count or a percentage")
    target: int = Field(description="devices updated once this wave is done")
    outcomes: dict[str, int] = Field(description="assigned devices by outcome")


class GatePublic(BaseModel):
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    note: str = ""


class JudgementPublic(BaseModel):
    """A wave's verdict; ``overridden`` when an operator resumed past failed gates."""

    wave: int
    at_s: float
    passed: bool
    overridden: bool = False
    gates: list[GatePublic]


class ShadowStagePublic(BaseModel):
    """The shadow stage: the devices ordered to shadow, and its verdict once judged
    (``wave`` -1 in it); ``running`` while shadow orders are out."""

    devices: list[str]
    started_at_s: float
    running: bool
    promoted: bool = False
    judgement: JudgementPublic | None = None


class RolloutEventPublic(BaseModel):
    id: int | None
    kind: str
    at: str
    details: dict[str, Any]


class RolloutDetail(RolloutSummary):
    """Everything an operator reads about a rollout: waves, outcomes, gates, events."""

    policy: RolloutPolicyPublic
    matching_devices: int
    waves: list[WavePublic]
    gates: list[GatePublic] = Field(description="the gates of the last judged wave")
    judgements: list[JudgementPublic]
    shadow: ShadowStagePublic | None = Field(
        default=None, description="the shadow stage, when the rollout has one and it started"
    )
    notes: list[str]
    pending_commands: int
    events: list[RolloutEventPublic] = Field(description="the latest 50, newest first")
