"""What a device reports: its state (retained), lifecycle events, telemetry windows.

Devices publish these as bare canonical JSON on their own topics; the broker's ACL, not a
signature, ties them to the device. Each still has a distinct payload type so that it can
be wrapped in a DSSE envelope where a device key exists. Events and telemetry batches carry
a per-device ``seq`` so that the controller applies each once, whatever MQTT redelivers.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import AwareDatetime, Field, model_validator

from .deployment import MAX_MODELS_PER_DEVICE
from .document import DeviceId, Document, Model, Name
from .release import ReleaseRef, TensorName
from .shadow import ShadowWindow

__all__ = [
    "Event",
    "LatencySummary",
    "ModelState",
    "State",
    "TelemetryBatch",
    "TelemetryWindow",
]

MAX_WINDOWS_PER_BATCH = 1000
Label = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class ModelState(Model):
    """One model on the device: where its update stands and what it serves."""

    model: Name
    phase: Label = "idle"
    active: ReleaseRef | None = None
    previous: ReleaseRef | None = None
    # The newest release of this model that passed probation here and still serves or
    # would serve after a rollback: what a fleet rollback may return the device to.
    last_good: ReleaseRef | None = None
    deployment_sequence: int | None = Field(default=None, ge=1)


class State(Document):
    """Schema 2 lists every model (ADR 0003); ``phase`` is the busiest model's phase."""

    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.state+json"
    SCHEMA_VERSION: ClassVar[int] = 2
    MIN_SCHEMA_VERSION: ClassVar[int] = 2

    schema_version: int = 2
    device_id: DeviceId
    online: bool
    agent_version: str | None = None
    phase: Label = "idle"
    models: list[ModelState] = Field(default=[], max_length=MAX_MODELS_PER_DEVICE)
    runtimes: list[str] = []
    # Threads one inference may use (the agent's inference_threads, resolved).
    inference_threads: int | None = Field(default=None, ge=1)
    trust_root_version: int | None = Field(default=None, ge=1)
    # When that trust root expires: after it the device refuses every order, so the
    # controller warns long before (added without a schema bump).
    trust_root_expires_at: AwareDatetime | None = None
    reported_at: AwareDatetime | None = None


class Event(Document):
    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.event+json"

    device_id: DeviceId
    seq: int = Field(ge=1)
    type: Label
    at: AwareDatetime
    deployment_sequence: int | None = Field(default=None, ge=1)
    # The model the event is about (also when there is no release: a removal).
    model: Name | None = None
    phase: Label | None = None
    release: ReleaseRef | None = None
    reason: str | None = None
    details: dict[str, Any] = {}


class LatencySummary(Model):
    p50_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)
    p99_ms: float = Field(ge=0)
    # counts[i] is the number of requests with latency <= bounds_ms[i] and above the
    # previous bound; the last count is for latencies above every bound.
    bounds_ms: list[float] = []
    counts: list[Annotated[int, Field(ge=0)]] = []

    @model_validator(mode="after")
    def _buckets(self) -> LatencySummary:
        if (self.bounds_ms or self.counts) and len(self.counts) != len(self.bounds_ms) + 1:
            raise ValueError("latency histogram needs one more count than bounds")
        return self


MAX_DRIFT_TENSORS = 256
MAX_DRIFT_BINS = 256
DriftCounts = Annotated[
    list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=MAX_DRIFT_BINS)
]


class TelemetryWindow(Document):
    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.telemetry-window+json"

    model: Name
    release: ReleaseRef | None = None
    window_start: AwareDatetime
    window_s: float = Field(gt=0)
    requests: int = Field(ge=0)
    errors: int = Field(ge=0)
    nonfinite_outputs: int = Field(ge=0)
    latency: LatencySummary | None = None
    top1_confidence_mean: float | None = Field(default=None, ge=0, le=1)
    class_counts: list[Annotated[int, Field(ge=0)]] | None = None
    # PSI per tensor (inputs and outputs) against the release's reference profile.
    drift_psi: dict[str, float] = {}
    # The worst output's PSI, only for a window with enough requests to judge it
    # (docs/protocol.md §11); input drift is the data's and never gates a rollout.
    output_drift_psi: float | None = Field(default=None, ge=0)
    # How many live values fell in each bin of the reference profile's histogram, per
    # tensor (inputs and outputs), whatever the window's size: the controller adds them
    # up over a group's windows and devices before it reads a PSI, which a window's own
    # PSI (biased upwards by about 9/N on N values) cannot give.
    drift_counts: dict[TensorName, DriftCounts] = Field(default={}, max_length=MAX_DRIFT_TENSORS)
    # Requests whose true class the application sent back (the agent's feedback API),
    # and how many of them the model classified right.
    labeled: int = Field(default=0, ge=0)
    labeled_correct: int = Field(default=0, ge=0)
    # How a shadow model (a candidate run beside this one) compared over the window.
    shadow: ShadowWindow | None = None

    @model_validator(mode="after")
    def _errors_within_requests(self) -> TelemetryWindow:
        if self.errors > self.requests:
            raise ValueError("errors exceed requests")
        if self.labeled_correct > self.labeled:
            raise ValueError("labeled_correct exceeds labeled")
        return self


class TelemetryBatch(Document):
    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.telemetry-batch+json"

    device_id: DeviceId
    seq: int = Field(ge=1)
    windows: list[TelemetryWindow] = Field(min_length=1, max_length=MAX_WINDOWS_PER_BATCH)
