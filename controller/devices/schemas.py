"""What the devices API accepts and returns: one schema family per resource.

Enrollment answers carry secrets (``mqtt_password``, ``controller_token``); they are
returned once and never stored in clear, so no other schema has them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AssignmentPublic",
    "CertificatePublic",
    "CertificateRequest",
    "CertificateSummary",
    "DesiredPublic",
    "DeviceDetail",
    "DeviceEventPublic",
    "DeviceModelPublic",
    "DevicePublic",
    "EnrollRequest",
    "EnrollmentPublic",
    "EnrollmentTokenCreate",
    "EnrollmentTokenPublic",
    "FleetReleasePublic",
    "LabelsUpdate",
    "TelemetryWindowPublic",
]

MAX_TOKEN_CHARS = 256
MAX_CSR_BYTES = 8 * 1024  # controller.ca.MAX_CSR_BYTES; a P-256 CSR is under 600


class EnrollmentTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str] = {}
    device_id: str | None = Field(default=None, max_length=64)
    # None: the controller's enrollment_token_ttl_s.
    ttl_s: float | None = Field(default=None, gt=0)


class EnrollmentTokenPublic(BaseModel):
    token: str
    id: str
    expires_at: datetime
    labels: dict[str, str]
    device_id: str | None
    # Where devices reach this controller (settings.device_controller_url), for the
    # ``edgefleet-agent enroll --controller`` command.
    controller_url: str
    # SHA-256 of the trust root file enrollment hands out, for ``--trust-root-sha256``:
    # the device then refuses any other trust root, whoever answers its enrollment.
    trust_root_sha256: str
    # With TLS on: SHA-256 of the CA certificate (DER), for ``--ca-sha256``: the device
    # checks the controller's HTTPS against that CA before it sends the token.
    ca_sha256: str | None = None


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(max_length=MAX_TOKEN_CHARS)
    device_id: str | None = Field(default=None, max_length=64)
    # A PEM certificate request for the key the device made; it gets a client certificate.
    csr: str | None = Field(default=None, max_length=MAX_CSR_BYTES)


class EnrollmentPublic(BaseModel):
    device_id: str
    labels: dict[str, str]
    mqtt_username: str
    mqtt_password: str
    broker_url: str
    topic_prefix: str
    controller_url: str
    controller_token: str
    trust_root: dict[str, Any]
    client_certificate: str | None = None
    ca_certificate: str | None = None


class CertificateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csr: str = Field(max_length=MAX_CSR_BYTES)


class CertificatePublic(BaseModel):
    """A device's new client certificate (PEM) and the CA that issued it."""

    device_id: str
    certificate: str
    ca_certificate: str
    expires_at: datetime


class DeviceModelPublic(BaseModel):
    """One model on a device: what it reports (``phase`` None: its last state does not
    list the model) and what the controller wants of it."""

    model: str
    phase: str | None
    active_version: int | None
    active_sha256: str | None
    previous_version: int | None
    last_good_version: int | None
    reported_sequence: int | None
    desired_version: int | None
    desired_remove: bool
    desired_rollback: bool
    desired_sequence: int | None
    desired_expires_at: datetime | None
    desired_rollout_id: str | None


class DevicePublic(BaseModel):
    id: str
    labels: dict[str, str]
    online: bool
    last_seen_at: datetime | None
    phase: str | None  # the busiest model's phase
    agent_version: str | None
    models: list[DeviceModelPublic]  # by model name
    enrolled_at: datetime
    decommissioned_at: datetime | None
    # The trust root the device holds, as it last reported (None before it reported).
    trust_root_version: int | None = None
    trust_root_expires_at: datetime | None = None


class DesiredPublic(BaseModel):
    """The device's desired state as a whole; each model's part is in ``models``."""

    sequence: int | None  # the newest deployment signed for the device, any model
    published_sequence: int | None


class AssignmentPublic(BaseModel):
    rollout_id: str
    model: str | None
    version: int | None
    wave: int
    outcome: str
    reason: str | None
    probation: str | None
    deployment_sequence: int | None
    assigned_at_s: float
    reported_at_s: float | None
    rolled_back_by_rollout: bool


class DeviceEventPublic(BaseModel):
    seq: int
    type: str
    at: datetime
    received_at: datetime
    deployment_sequence: int | None
    model_name: str | None
    version: int | None
    reason: str | None
    details: dict[str, Any]


class TelemetryWindowPublic(BaseModel):
    model_name: str
    version: int | None
    window_start: datetime
    window_s: float
    requests: int
    errors: int
    nonfinite: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    confidence_mean: float | None
    max_drift_psi: float | None
    merged: int


class CertificateSummary(BaseModel):
    """A device's live client certificate (``certificate: null``: none, it uses a password)."""

    serial: str
    sha256: str
    issued_at: datetime
    expires_at: datetime


class DeviceDetail(DevicePublic):
    reported_state: dict[str, Any] | None
    desired: DesiredPublic
    assignments: list[AssignmentPublic]
    events: list[DeviceEventPublic]
    telemetry: list[TelemetryWindowPublic]
    certificate: CertificateSummary | None = None


class LabelsUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    labels_to_set: dict[str, str] = Field(default_factory=dict, alias="set")
    labels_to_remove: list[str] = Field(default_factory=list, alias="remove")


class FleetReleasePublic(BaseModel):
    model: str
    version: int | None
    devices: int
    online: int
