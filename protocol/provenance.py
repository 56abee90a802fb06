"""A release's provenance: where the model came from, in the signed document itself.

A device, an auditor or ``edgefleet doc verify`` answers "where did this model come from"
from the release alone: the source (an upload, an MLflow run, ...), the run, its
parameters, metrics and datasets, the version a variant was derived from (by artifact
hash), the recipe and the gate that accepted it, a summary of its evaluation, and who
approved the release.

Invariants:
- everything is bounded: each string, list and map, and the whole block, which is at most
  ``MAX_PROVENANCE_BYTES`` of canonical JSON, so a release carrying the largest allowed
  provenance still fits ``MAX_RELEASE_ENVELOPE_BYTES``; a writer trims (and says what it
  trimmed in ``trimmed``), a reader refuses more;
- ``source`` is an open word, not a closed list: a newer controller may add sources that
  an older device must still read;
- the block is optional (``Release.provenance`` defaults to ``None``) and, like every
  part of a document, keeps fields it does not know; releases signed before it existed,
  and readers written before it, are unaffected (no schema version change).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AwareDatetime, Field, model_validator

from .canonical import canonical_json
from .document import Model, Name, Sha256Hex

__all__ = [
    "MAX_PROVENANCE_BYTES",
    "MAX_PROVENANCE_DATASETS",
    "MAX_PROVENANCE_ENTRIES",
    "MAX_PROVENANCE_TEXT_CHARS",
    "DatasetRef",
    "EvaluationSummary",
    "ParentRef",
    "Provenance",
    "VariantRecipe",
]

# Per-field bounds; the whole block is bounded more tightly still by MAX_PROVENANCE_BYTES,
# so the binding limit for a run with many parameters is the byte total.
MAX_PROVENANCE_TEXT_CHARS = 256
MAX_PROVENANCE_NAME_CHARS = 128
MAX_PROVENANCE_ENTRIES = 64
MAX_PROVENANCE_DATASETS = 16
MAX_GATE_THRESHOLDS = 8
MAX_TRIMMED_FIELDS = 8
# A signed release is at most 8 KiB (protocol.release); the rest of the document (I/O
# signature, evaluation report, hashes) keeps the other 5 KiB, before base64 and signature.
MAX_PROVENANCE_BYTES = 3 * 1024

Text = Annotated[str, Field(max_length=MAX_PROVENANCE_TEXT_CHARS)]
ShortText = Annotated[str, Field(max_length=MAX_PROVENANCE_NAME_CHARS)]
Key = Annotated[str, Field(min_length=1, max_length=MAX_PROVENANCE_TEXT_CHARS)]
GateKey = Annotated[str, Field(min_length=1, max_length=64)]
Word = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,31}$")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Ratio = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class DatasetRef(Model):
    """A dataset the run logged: its name, content digest and where it was read from."""

    name: Text
    digest: Text | None = None
    source: Text | None = None
    context: ShortText | None = None  # MLflow's "training", "evaluation", ...


class ParentRef(Model):
    """The version a variant was derived from, by the hash of its artifact."""

    model: Name
    version: int = Field(ge=1)
    sha256: Sha256Hex


class VariantRecipe(Model):
    """How a variant was made: the conversion and the quality gate's thresholds."""

    mode: Word
    gate: dict[GateKey, FiniteFloat] | None = Field(default=None, max_length=MAX_GATE_THRESHOLDS)


class EvaluationSummary(Model):
    """The variant against its parent on the validation set; ratios are candidate / parent."""

    samples: int | None = Field(default=None, ge=0)
    accuracy_parent: Ratio | None = None
    accuracy_candidate: Ratio | None = None
    top1_agreement: Ratio | None = None
    latency_ratio: Ratio | None = None
    size_ratio: Ratio | None = None


class Provenance(Model):
    source: Word
    source_uri: Text | None = None
    run_id: Text | None = None
    experiment: Text | None = None
    params: dict[Key, Text] = Field(default={}, max_length=MAX_PROVENANCE_ENTRIES)
    metrics: dict[Key, FiniteFloat] = Field(default={}, max_length=MAX_PROVENANCE_ENTRIES)
    datasets: list[DatasetRef] = Field(default=[], max_length=MAX_PROVENANCE_DATASETS)
    parent: ParentRef | None = None
    variant: VariantRecipe | None = None
    evaluation: EvaluationSummary | None = None
    channel: ShortText | None = None
    pipeline: ShortText | None = None
    approved_by: ShortText | None = None
    approved_at: AwareDatetime | None = None
    created_by: ShortText | None = None  # who registered the version
    released_by: ShortText | None = None  # who asked for the release to be signed
    # The fields a writer trimmed to stay within MAX_PROVENANCE_BYTES ("params", ...).
    trimmed: list[ShortText] = Field(default=[], max_length=MAX_TRIMMED_FIELDS)

    @model_validator(mode="after")
    def _bounded(self) -> Provenance:
        size = self.size_bytes()
        if size > MAX_PROVENANCE_BYTES:
            raise ValueError(f"provenance of {size} bytes exceeds {MAX_PROVENANCE_BYTES} bytes")
        return self

    def size_bytes(self) -> int:
        """The block's length as canonical JSON, the measure of its bound."""
        return len(canonical_json(self.model_dump(mode="json")))
