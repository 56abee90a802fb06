"""A release: exactly which model file may run, and how a device checks it first.

Invariants: the artifact and its check bundle (golden cases and reference profile, a
separate ``.npz`` file, see ``tensors.check_bundle``) are each named by SHA-256 and byte
length, so the signed document stays small whatever the model weighs; the artifact's file
name is a plain name that cannot escape a directory; histograms have one more edge than
bins. Schema version 2 moved the golden cases out of the document: this code refuses
version 1 releases (``UnsupportedSchemaError``) rather than run them unchecked.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, Field, model_validator

from .document import Document, Model, Name, Sha256Hex
from .provenance import Provenance

__all__ = [
    "DATATYPE_BYTES",
    "MAX_CHECK_BUNDLE_BYTES",
    "MAX_RELEASE_ENVELOPE_BYTES",
    "Artifact",
    "CheckBundleRef",
    "Histogram",
    "ReferenceProfile",
    "Release",
    "ReleaseRef",
    "RuntimeRequirements",
    "TensorSpec",
]

# Open Inference Protocol (KServe v2) datatypes and their sizes in bytes.
DATATYPE_BYTES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
}
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64",
]  # fmt: skip
TensorName = Annotated[str, Field(min_length=1, max_length=256)]


class TensorSpec(Model):
    """A model input or output: name, datatype, shape with -1 for a free dimension."""

    name: TensorName
    datatype: Datatype
    shape: list[Annotated[int, Field(ge=-1)]]


class Histogram(Model):
    bin_edges: list[float] = Field(min_length=2)
    fractions: list[Annotated[float, Field(ge=0)]]

    @model_validator(mode="after")
    def _shape(self) -> Histogram:
        if len(self.fractions) != len(self.bin_edges) - 1:
            raise ValueError("a histogram needs one more edge than bins")
        if any(b <= a for a, b in zip(self.bin_edges, self.bin_edges[1:], strict=False)):
            raise ValueError("histogram edges must increase")
        return self


class ReferenceProfile(Model):
    """What the model's inputs and outputs looked like on the validation set.

    ``source`` says where the profiled inputs came from: ``"validation"`` (the version's
    validation set) or ``"generated"`` (seeded synthetic inputs, when the version has
    none). A generated profile describes noise, not the application's data: it must never
    drive a drift judgement.
    """

    source: Literal["validation", "generated"] | None = None
    inputs: dict[TensorName, Histogram] = {}
    outputs: dict[TensorName, Histogram] = {}
    top1_confidence_mean: float | None = None
    class_distribution: list[Annotated[float, Field(ge=0)]] | None = None


class Artifact(Model):
    sha256: Sha256Hex
    length: int = Field(ge=1)
    format: Literal["onnx", "tflite"]
    filename: Name


class RuntimeRequirements(Model):
    name: Literal["onnxruntime", "litert"]
    min_version: str | None = None
    opset: int | None = Field(default=None, ge=1)


# Golden cases are a few inputs of the model: even 224x224 images with 4 cases are a few
# MB. The cap bounds what a device downloads and parses before its check.
MAX_CHECK_BUNDLE_BYTES = 256 * 1024 * 1024
# A signed release is a manifest, not a payload: whatever the model weighs it stays this
# small, so a deployment that carries it stays under 16 KiB (docs/protocol.md). Signers
# refuse to sign more; verifiers accept up to the DSSE limit, to read what older tools
# signed and refuse it for what it is.
MAX_RELEASE_ENVELOPE_BYTES = 8 * 1024


class CheckBundleRef(Model):
    """The release's check bundle (``tensors.check_bundle``), by content."""

    sha256: Sha256Hex
    length: int = Field(ge=1, le=MAX_CHECK_BUNDLE_BYTES)


class ReleaseRef(Model):
    """A short reference to a release, as devices report it."""

    model: Name
    version: int = Field(ge=1)
    sha256: Sha256Hex


class Release(Document):
    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.release+json"
    SCHEMA_VERSION: ClassVar[int] = 2
    MIN_SCHEMA_VERSION: ClassVar[int] = 2

    schema_version: int = 2

    model: Name
    version: int = Field(ge=1)
    artifact: Artifact
    runtime: RuntimeRequirements
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    check_bundle: CheckBundleRef
    evaluation: dict[str, Any] | None = None
    created_at: AwareDatetime
    notes: str = ""
    # Where the model came from (protocol.provenance); optional, so releases signed before
    # it and readers written before it need no new schema version.
    provenance: Provenance | None = None

    def ref(self) -> ReleaseRef:
        return ReleaseRef(model=self.model, version=self.version, sha256=self.artifact.sha256)
