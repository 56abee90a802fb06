"""What the controller tells one device: a deployment (which release to run) or a command.

Invariants: each names exactly one device and carries a per-device sequence number and an
expiry after its issue time; the release inside a deployment stays a separately signed
envelope, so the deployment key alone can choose among releases but never create one.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import AwareDatetime, Field, model_validator

from .document import DeviceId, Document, EnvelopeObject, Model
from .dsse import Envelope

__all__ = ["Command", "Deployment", "ProbationPolicy"]


class ProbationPolicy(Model):
    """How long a new model is watched on the device and what makes it fail."""

    window_s: float = Field(default=300.0, gt=0)
    min_requests: int = Field(default=100, ge=0)
    max_extension_s: float = Field(default=900.0, ge=0)
    max_p95_latency_ratio: float = Field(default=1.5, gt=0)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_nonfinite_rate: float = Field(default=0.0, ge=0, le=1)
    max_confidence_drop: float = Field(default=0.1, ge=0, le=1)
    max_drift_psi: float = Field(default=0.25, ge=0)
    latency_budget_ms: float | None = Field(default=None, gt=0)


class _DeviceOrder(Document):
    device_id: DeviceId
    sequence: int = Field(ge=1)
    issued_at: AwareDatetime
    expires: AwareDatetime
    # A newer trust root for the device to adopt through the rotation rules.
    trust_root: EnvelopeObject | None = None

    @model_validator(mode="after")
    def _expires_after_issue(self) -> _DeviceOrder:
        if self.expires <= self.issued_at:
            raise ValueError("expires must be after issued_at")
        return self

    def trust_root_envelope(self) -> Envelope | None:
        return None if self.trust_root is None else Envelope.from_json_obj(self.trust_root)


class Deployment(_DeviceOrder):
    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.deployment+json"

    release: EnvelopeObject
    rollback: bool = False
    probation: ProbationPolicy = ProbationPolicy()
    rollout_id: str | None = None
    artifact_url: str | None = None

    def release_envelope(self) -> Envelope:
        return Envelope.from_json_obj(self.release)


class Command(_DeviceOrder):
    """A one-off order. Its ``sequence`` is counted apart from deployments'."""

    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.command+json"

    action: Literal["resync", "rollback", "diagnostics"]
    args: dict[str, Any] = {}
