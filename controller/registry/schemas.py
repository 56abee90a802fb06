"""What the API accepts and returns, one family per resource."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MODEL_NAME_PATTERN",
    "VARIANT_MODES",
    "LineageEdgePublic",
    "LineageNodePublic",
    "LineagePublic",
    "ModelPublic",
    "ModelVersionPublic",
    "ReleasePublic",
    "TensorSpecPublic",
    "VariantCreate",
]

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
VariantMode = Literal["int8-dynamic", "int8-static", "fp16", "tflite-int8-dynamic"]
VARIANT_MODES: tuple[str, ...] = ("int8-dynamic", "int8-static", "fp16", "tflite-int8-dynamic")


class TensorSpecPublic(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelVersionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    model_name: str
    version: int
    parent_version: int | None
    origin: str
    variant_mode: str | None
    status: str
    format: str
    sha256: str
    size_bytes: int
    opset: int | None
    producer: str | None
    inputs: list[TensorSpecPublic]
    outputs: list[TensorSpecPublic]
    has_validation_set: bool
    report: dict[str, Any] | None
    reasons: list[str]
    notes: list[str]
    lineage: dict[str, Any] | None = Field(
        default=None,
        description="Where the version came from, as recorded: {source: upload | mlflow, "
        "source_uri, run_id, experiment, params, metrics, datasets, ...}; null for a "
        "variant, which inherits its root's (see the model's lineage graph).",
    )
    released: bool
    created_by: str
    created_at: datetime


class LineageNodePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    origin: str
    variant_mode: str | None
    status: str
    released: bool
    sha256: str
    created_by: str
    created_at: datetime
    lineage_version: int = Field(
        description="The version whose lineage this one carries: itself, or a variant's root."
    )
    source: str | None
    source_uri: str | None
    run_id: str | None
    experiment: str | None


class LineageEdgePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    parent: int
    child: int
    kind: Literal["derived", "succeeds"] = Field(
        description="derived: a variant made from its parent; succeeds: a later upload or "
        "import, the model's latest version when it arrived."
    )


class LineagePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    model: str
    nodes: list[LineageNodePublic]
    edges: list[LineageEdgePublic]


class ModelPublic(BaseModel):
    name: str
    versions: int
    latest_version: int | None
    created_at: datetime


class VariantCreate(BaseModel):
    mode: VariantMode = Field(description="How to derive the variant from its parent.")
    max_latency_ratio: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="Reject the variant when it is slower than this times its parent on the "
        "controller's CPU (default: the controller's EDGEFLEET_MAX_LATENCY_RATIO, 1.10).",
    )


class ReleasePublic(BaseModel):
    model_name: str
    version: int
    sha256: str
    created_by: str
    created_at: datetime
    envelope: dict[str, Any] = Field(description="The signed Release as a DSSE envelope.")
