"""What the controller tells one device: a deployment (which release of one model to run,
or to remove that model) or a command.

Invariants: each names exactly one device and carries a per-device sequence number and an
expiry after its issue time; a deployment names exactly one model, and either carries a
release of that model, says ``remove``, or orders a shadow (``protocol.shadow``: a
candidate run beside the serving model, which does not change) — exactly one of them;
the release inside stays a separately signed envelope, so the deployment key alone can
choose among releases but never create one. Schema 2 added the model (several models per
device, ADR 0003); a schema 1 deployment is refused with ``UnsupportedSchemaError``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, AwareDatetime, Field, model_validator

from .document import DeviceId, Document, EnvelopeObject, Model, Name
from .dsse import Envelope
from .shadow import ShadowOrder

__all__ = [
    "MAX_ARTIFACT_MIRRORS",
    "MAX_CARRIED_TRUST_ROOTS",
    "MAX_MODELS_PER_DEVICE",
    "Command",
    "Deployment",
    "DesiredState",
    "ProbationPolicy",
    "mirror_artifact_url",
]

# A device runs a handful of models; the bound keeps one retained message small.
MAX_MODELS_PER_DEVICE = 16
# Trust roots one order may carry: a device this many rotations behind still walks forward.
MAX_CARRIED_TRUST_ROOTS = 32
# Artifact mirrors one deployment may name, and how long each base URL may be: enough for
# a few CDNs and object stores, small beside the 16 KB a deployment may take.
MAX_ARTIFACT_MIRRORS = 8
MAX_MIRROR_URL_CHARS = 512


# scheme://host[:port][/path]: no credentials, query or fragment (they would be sent to,
# or logged by, every device). Checked by pattern: protocol does no URL parsing with I/O
# libraries (an import-linter contract).
_MIRROR_URL = re.compile(
    r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[^\s?#@]*)?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?(/[^\s?#@]*)?"
)


def _check_mirror_url(value: str) -> str:
    if not _MIRROR_URL.fullmatch(value):
        raise ValueError(
            "an artifact mirror is an http:// or https:// base URL without credentials, "
            "query or fragment"
        )
    return value.rstrip("/")


def mirror_artifact_url(base: str, sha256: str) -> str:
    """Where mirror ``base`` serves the artifact ``sha256``: ``{base}/sha256/<hex>``, the
    layout ``edgefleet artifacts export`` writes and the controller's ``/artifacts`` has."""
    return f"{base.rstrip('/')}/sha256/{sha256}"


# Where ``sha256/<hex>`` of every artifact can be fetched: a static server, CDN or object
# store. Trusted for nothing: the device checks the signed length and hash of what it gets.
MirrorUrl = Annotated[
    str, Field(max_length=MAX_MIRROR_URL_CHARS), AfterValidator(_check_mirror_url)
]


class ProbationPolicy(Model):
    """How long a new model is watched on the device and what makes it fail."""

    window_s: float = Field(default=300.0, gt=0)
    min_requests: int = Field(default=100, ge=0)
    max_extension_s: float = Field(default=900.0, ge=0)
    max_p95_latency_ratio: float = Field(default=1.5, gt=0)
    # A slower p95 trips only when it is also this much above the baseline's: below a
    # millisecond a busy CPU's scheduling moves p95 more than the model does (a 0.2 ms
    # model read 0.97 ms on a loaded machine). Added without a schema bump.
    min_p95_latency_increase_ms: float = Field(default=1.0, ge=0)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_nonfinite_rate: float = Field(default=0.0, ge=0, le=1)
    max_confidence_drop: float = Field(default=0.1, ge=0, le=1)
    max_drift_psi: float = Field(default=0.25, ge=0)
    # Accuracy on requests the application labeled (its feedback), new model against the
    # previous one, judged beyond noise (``tensors.accuracy``); added without a schema bump.
    max_label_accuracy_drop: float = Field(default=0.05, ge=0, le=1)
    latency_budget_ms: float | None = Field(default=None, gt=0)


class _DeviceOrder(Document):
    device_id: DeviceId
    sequence: int = Field(ge=1)
    issued_at: AwareDatetime
    expires: AwareDatetime
    # A newer trust root for the device to adopt through the rotation rules.
    trust_root: EnvelopeObject | None = None
    # Several, for a device more than one rotation behind: every version after the
    # device's, each adopted by the rotation rules in version order. Added without a
    # schema bump: an older agent ignores it (and refuses what it cannot verify).
    trust_roots: list[EnvelopeObject] = Field(
        default_factory=list, max_length=MAX_CARRIED_TRUST_ROOTS
    )

    @model_validator(mode="after")
    def _expires_after_issue(self) -> _DeviceOrder:
        if self.expires <= self.issued_at:
            raise ValueError("expires must be after issued_at")
        return self

    def trust_root_envelope(self) -> Envelope | None:
        return None if self.trust_root is None else Envelope.from_json_obj(self.trust_root)

    def carried_trust_roots(self) -> list[Envelope]:
        """``trust_root`` and ``trust_roots``, as envelopes, in the order given."""
        carried = [] if self.trust_root is None else [self.trust_root]
        return [Envelope.from_json_obj(obj) for obj in [*carried, *self.trust_roots]]


class Deployment(_DeviceOrder):
    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.deployment+json"
    SCHEMA_VERSION: ClassVar[int] = 2
    MIN_SCHEMA_VERSION: ClassVar[int] = 2

    schema_version: int = 2
    model: Name
    release: EnvelopeObject | None = None
    # Stop serving ``model`` and forget its files: a signed order like any other.
    remove: bool = False
    rollback: bool = False
    probation: ProbationPolicy = ProbationPolicy()
    rollout_id: str | None = None
    artifact_url: str | None = None
    # Run a candidate beside the serving model, or stop running one; serving does not
    # change (added without a schema bump: an older agent refuses it as malformed).
    shadow: ShadowOrder | None = None
    # Artifact mirrors, tried in order before the controller (docs/artifact-mirrors.md).
    # Added without a schema bump and written only when there are some: an older agent
    # keeps the unknown field (§4.2), ignores it and downloads from the controller.
    mirrors: list[MirrorUrl] = Field(default_factory=list, max_length=MAX_ARTIFACT_MIRRORS)

    @model_validator(mode="after")
    def _release_or_remove(self) -> Deployment:
        orders = (self.release is not None) + self.remove + (self.shadow is not None)
        if orders != 1:
            raise ValueError(
                "a deployment carries a release, says remove, or orders a shadow: one of them"
            )
        return self

    def to_json_obj(self) -> dict[str, Any]:
        obj = super().to_json_obj()
        if not obj.get("mirrors"):
            # Without mirrors the payload stays what it was before they existed.
            obj.pop("mirrors", None)
        return obj

    def release_envelope(self) -> Envelope:
        if self.release is None:
            raise ValueError(f"deployment {self.sequence} of {self.model} has no release")
        return Envelope.from_json_obj(self.release)


class DesiredState(Document):
    """A device's retained desired state: the newest signed deployment of each model.

    Not signed itself, and it needs no signature: every entry is a deployment envelope the
    device verifies on its own, against its own per-model sequence mark, and leaving a
    model out means "no news about it", never "remove it" (only a signed ``remove``
    deployment does that). So whoever could forge the list could only replay or withhold
    signed deployments, which the marks and expiries already stop (ADR 0003).
    """

    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.desired-state+json"

    device_id: DeviceId
    deployments: list[EnvelopeObject] = Field(default=[], max_length=MAX_MODELS_PER_DEVICE)


class Command(_DeviceOrder):
    """A one-off order. Its ``sequence`` is counted apart from deployments'."""

    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.command+json"

    action: Literal["resync", "rollback", "diagnostics", "capture"]
    args: dict[str, Any] = {}
