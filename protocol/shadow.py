"""Shadow evaluation: the order that makes a device run a candidate beside its serving
model, and what the device reports about how the two differ.

A ``ShadowOrder`` rides in a signed ``Deployment`` of its model (the deployment then
carries no release of its own: serving does not change). The candidate release inside is
a separately signed envelope, verified like any release; ``release = None`` ends the
shadow. A shadow never answers a request: the serving model answers every one, and the
shadow runs copies of some of them off the request path, within ``max_cpu_fraction`` of
the elapsed time, and stops by itself at ``until``.

A ``ShadowWindow`` is added to the serving model's telemetry window. Its figures are sums
and histogram counts, so the controller adds them up over windows and devices before it
reads a rate, a mean or a quantile (as with the serving model's own figures).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, Field, model_validator

from .document import EnvelopeObject, Model
from .histograms import LATENCY_BUCKETS
from .release import ReleaseRef

__all__ = ["DEFAULT_SHADOW_CPU_FRACTION", "ShadowOrder", "ShadowWindow"]

DEFAULT_SHADOW_CPU_FRACTION = 0.2

_LatencyCounts = Annotated[
    list[Annotated[int, Field(ge=0)]], Field(min_length=LATENCY_BUCKETS, max_length=LATENCY_BUCKETS)
]


class ShadowOrder(Model):
    """Run ``release`` as a shadow of the deployment's model until ``until``; None: stop."""

    release: EnvelopeObject | None = None
    until: AwareDatetime | None = None
    # The share of elapsed time the shadow model may spend running (the device's own
    # ``shadow_max_cpu_fraction`` may lower it further).
    max_cpu_fraction: float = Field(default=DEFAULT_SHADOW_CPU_FRACTION, gt=0, le=1)

    @model_validator(mode="after")
    def _until_with_release(self) -> ShadowOrder:
        if (self.release is None) != (self.until is None):
            raise ValueError("a shadow order with a release needs until; a stop has neither")
        return self


class ShadowWindow(Model):
    """How a shadow model compared with the serving model over one telemetry window."""

    release: ReleaseRef
    # Requests copied to the shadow, and those left out (budget spent or shadow busy).
    samples: int = Field(ge=0)
    skipped: int = Field(ge=0)
    # Samples the shadow failed to run, and samples with a NaN or infinite shadow output.
    errors: int = Field(ge=0)
    nonfinite: int = Field(ge=0)
    # Classifiers: rows both models classified (finite scores), and rows of the same
    # top-1 class; and each model's top-1 confidence summed over those rows.
    compared_rows: int = Field(ge=0)
    agreed_rows: int = Field(ge=0)
    confidence_sum: float = Field(ge=0)
    serving_confidence_sum: float = Field(ge=0)
    # Every model: the relative L1 distance of the outputs (sum |shadow - serving| over
    # sum |serving|), summed over samples with finite outputs.
    distance_sum: float = Field(ge=0)
    # CPU time per run (``protocol.histograms`` buckets, in ms) of the shadow, and of a
    # copy of the serving model run on some of the same samples, both on one thread in
    # the shadow's thread: like for like, whatever else the device is busy with.
    cpu_counts: _LatencyCounts
    serving_cpu_counts: _LatencyCounts

    @model_validator(mode="after")
    def _consistent(self) -> ShadowWindow:
        if self.agreed_rows > self.compared_rows:
            raise ValueError("agreed_rows exceeds compared_rows")
        if self.errors > self.samples or self.nonfinite > self.samples:
            raise ValueError("errors and nonfinite are counted among samples")
        return self
