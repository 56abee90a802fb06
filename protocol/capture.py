"""Budgeted sample capture: the policy a ``capture`` command carries, and what a captured
sample says about itself.

Invariants:
- a device keeps raw inputs only under a ``CapturePolicy`` it received in a signed
  ``Command`` (action ``"capture"``, the policy in ``args``) for one model, and only until
  the policy's ``until``; ``off`` (or a passed ``until``) ends it;
- the budget is explicit: at most ``per_hour`` samples in any hour and ``max_bytes`` of
  samples waiting on the device's disk, both bounded here so that no order can make a
  device keep more than ``MAX_CAPTURE_BYTES``;
- ``SampleMeta`` names the device, model, release and time of one sample and why it was
  kept. The controller never trusts ``device_id`` for authorization (the device's token
  says who uploads); it refuses a sample whose ``device_id`` is not the uploader's.

The sample's bytes (an ``.npz`` of the inputs, outputs and this metadata) are written and
read by ``tensors.samples``: protocol stays free of numpy.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, Field

from .document import DeviceId, Model, Name

__all__ = [
    "CAPTURE_ACTION",
    "MAX_CAPTURE_BYTES",
    "MAX_CAPTURE_PER_HOUR",
    "CapturePolicy",
    "CaptureReason",
    "SampleMeta",
]

CAPTURE_ACTION = "capture"
# The most a policy may let a device keep on disk (per model) and per hour.
MAX_CAPTURE_BYTES = 1024 * 1024 * 1024
MAX_CAPTURE_PER_HOUR = 3600

# Why a sample was kept: its top-1 confidence was low, or many of its input values fell
# where the release's reference data rarely was (its drift contribution was high).
CaptureReason = Literal["low_confidence", "input_drift"]


class CapturePolicy(Model):
    """Which inputs of ``model`` a device keeps for retraining, and how many."""

    model: Name
    # Keep a request when the lowest top-1 confidence of its rows is below this.
    below_confidence: float = Field(gt=0, le=1)
    # Also keep one when at least this share of its input values falls in bins of the
    # reference histograms holding under 1% of the reference's values (drift); None: no.
    rare_input_share: float | None = Field(default=None, gt=0, le=1)
    per_hour: int = Field(ge=1, le=MAX_CAPTURE_PER_HOUR)
    max_bytes: int = Field(ge=1, le=MAX_CAPTURE_BYTES)
    until: AwareDatetime
    # True: stop capturing ``model`` now (the device drops samples not yet uploaded).
    off: bool = False

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> CapturePolicy:
        """The policy a capture command's ``args`` hold; raises ``pydantic.ValidationError``."""
        return cls.model_validate(args)

    def to_args(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class SampleMeta(Model):
    """What one captured sample is: whose, of which release, when, and why it was kept."""

    device_id: DeviceId
    model: Name
    # The release serving when it was captured (None: a model served without a release).
    release_version: int | None = Field(default=None, ge=1)
    captured_at: AwareDatetime
    reason: CaptureReason
    # The lowest top-1 confidence among the request's rows.
    confidence: float | None = None
    inputs: list[Name] = Field(default_factory=list, max_length=64)
    outputs: list[Name] = Field(default_factory=list, max_length=64)
