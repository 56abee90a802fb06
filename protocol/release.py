"""A release: exactly which model file may run, and how a device checks it first.

Invariants: the artifact is named by SHA-256 and byte length, and its file name is a
plain name that cannot escape a directory; golden tensors hold exactly as many bytes as
their datatype and shape require; histograms have one more edge than bins.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, Field, model_validator

from .document import Document, Model, Name, Sha256Hex

__all__ = [
    "DATATYPE_BYTES",
    "Artifact",
    "GoldenCase",
    "Histogram",
    "ReferenceProfile",
    "Release",
    "ReleaseRef",
    "RuntimeRequirements",
    "TensorData",
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


class TensorData(Model):
    """A concrete tensor; ``data`` is base64 of its little-endian row-major bytes."""

    name: TensorName
    datatype: Datatype
    shape: list[Annotated[int, Field(ge=0)]]
    data: str

    @model_validator(mode="after")
    def _size_matches(self) -> TensorData:
        expected = math.prod(self.shape) * DATATYPE_BYTES[self.datatype]
        actual = len(self.raw_bytes())
        if actual != expected:
            raise ValueError(
                f"tensor {self.name}: {actual} bytes, "
                f"but {self.datatype}{self.shape} needs {expected}"
            )
        return self

    def raw_bytes(self) -> bytes:
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"tensor {self.name}: data is not base64") from exc


class GoldenCase(Model):
    """Inputs the device runs before activation and the outputs it must reproduce."""

    inputs: list[TensorData] = Field(min_length=1)
    expected_outputs: list[TensorData] = Field(min_length=1)
    atol: float = Field(default=1e-4, ge=0)
    rtol: float = Field(default=1e-3, ge=0)


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


class ReleaseRef(Model):
    """A short reference to a release, as devices report it."""

    model: Name
    version: int = Field(ge=1)
    sha256: Sha256Hex


class Release(Document):
    PAYLOAD_TYPE: ClassVar[str] = "application/vnd.edgefleet.release+json"

    model: Name
    version: int = Field(ge=1)
    artifact: Artifact
    runtime: RuntimeRequirements
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    golden: list[GoldenCase] = []
    reference_profile: ReferenceProfile | None = None
    evaluation: dict[str, Any] | None = None
    created_at: AwareDatetime
    notes: str = ""

    def ref(self) -> ReleaseRef:
        return ReleaseRef(model=self.model, version=self.version, sha256=self.artifact.sha256)
