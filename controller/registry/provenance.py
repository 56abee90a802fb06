"""A version's provenance, as its release signs it: from the row, its chain and its root.

Pure: rows in, a ``protocol.Provenance`` out; the caller looks up the chain
(``lineage.derivation_chain``). A variant records no lineage of its own: it inherits its
root's (the nearest ancestor that is not a variant: an upload or an import), and adds
what it is itself: the version it was derived from by artifact hash, the conversion and
the gate's thresholds, and a summary of its evaluation against its parent.

Invariants: every key of the stored lineage is optional and untrusted (an import writes
what MLflow answered); strings are cut to their bound, maps and lists to theirs (sorted,
so the same lineage always signs the same block), non-finite metrics are dropped; and the
block always fits ``MAX_PROVENANCE_BYTES``: parameters go first, then metrics, then
datasets, then long texts are shortened, and ``trimmed`` names what lost entries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeGuard

from protocol import (
    MAX_PROVENANCE_BYTES,
    MAX_PROVENANCE_DATASETS,
    MAX_PROVENANCE_ENTRIES,
    MAX_PROVENANCE_TEXT_CHARS,
    DatasetRef,
    EvaluationSummary,
    ParentRef,
    Provenance,
    VariantRecipe,
)

from .tables import ModelVersion

__all__ = ["ReleaseRequest", "effective_lineage", "provenance_of"]

NAME_CHARS = 128
SHORT_TEXT_CHARS = 64  # what long texts are cut to when the block is still too large
MAX_GATE_THRESHOLDS = 8
# Where a variant's report may carry the thresholds its gate applied.
GATE_REPORT_KEYS = ("gate", "thresholds", "policy")
SUMMARY_KEYS = (
    "samples",
    "accuracy_parent",
    "accuracy_candidate",
    "top1_agreement",
    "latency_ratio",
    "size_ratio",
)
SOURCE_CHARS = 32


@dataclass(frozen=True)
class ReleaseRequest:
    """Who asked for a release and on whose approval; ``None`` where it does not apply."""

    released_by: str | None = None
    approved_by: str | None = None
    approved_at: datetime | None = None
    channel: str | None = None
    pipeline: str | None = None


def effective_lineage(
    row: ModelVersion, chain: Sequence[ModelVersion]
) -> tuple[ModelVersion, dict[str, Any] | None]:
    """The version whose lineage ``row`` carries (itself or its root) and that lineage."""
    for candidate in (row, *chain):
        if candidate.lineage is not None or candidate.origin != "variant":
            return candidate, candidate.lineage if isinstance(candidate.lineage, dict) else None
    return (chain[-1] if chain else row), None


def provenance_of(
    row: ModelVersion, chain: Sequence[ModelVersion], request: ReleaseRequest
) -> Provenance:
    """The provenance of ``row``; ``chain`` is its parent, grandparent, … up to its root."""
    root, lineage = effective_lineage(row, chain)
    lineage = lineage or {}
    variant = row.origin == "variant"
    parent = chain[0] if variant and chain else None
    fields: dict[str, Any] = {
        "source": _source(
            lineage.get("source"), root.origin if root.origin != "variant" else "unknown"
        ),
        "source_uri": _text(lineage.get("source_uri")),
        "run_id": _text(lineage.get("run_id")),
        "experiment": _text(lineage.get("experiment")),
        "params": _params(lineage.get("params")),
        "metrics": _metrics(lineage.get("metrics")),
        "datasets": _datasets(lineage.get("datasets")),
        "parent": (
            ParentRef(model=parent.model_name, version=parent.version, sha256=parent.sha256)
            if parent is not None
            else None
        ),
        "variant": (
            VariantRecipe(mode=_source(row.variant_mode, "variant"), gate=_gate(row.report))
            if variant and row.variant_mode
            else None
        ),
        "evaluation": _summary(row.report) if variant else None,
        "channel": _text(request.channel, NAME_CHARS),
        "pipeline": _text(request.pipeline, NAME_CHARS),
        "approved_by": _text(request.approved_by, NAME_CHARS),
        "approved_at": request.approved_at,
        "created_by": _text(row.created_by, NAME_CHARS),
        "released_by": _text(request.released_by, NAME_CHARS),
    }
    return fit_provenance(fields)


def fit_provenance(fields: dict[str, Any]) -> Provenance:
    """``Provenance(**fields)`` trimmed to ``MAX_PROVENANCE_BYTES``, saying what it trimmed."""
    trimmed: list[str] = []
    while True:
        candidate = Provenance.model_construct(**fields, trimmed=trimmed)
        if candidate.size_bytes() <= MAX_PROVENANCE_BYTES:
            return Provenance.model_validate({**fields, "trimmed": trimmed})
        fields, what = _trim_once(fields)
        if what not in trimmed:
            trimmed = [*trimmed, what]


def _trim_once(fields: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """One step smaller: the last parameter, metric or dataset, then shorter texts."""
    for key in ("params", "metrics"):
        if fields[key]:
            return {**fields, key: dict(list(fields[key].items())[:-1])}, key
    if fields["datasets"]:
        return {**fields, "datasets": fields["datasets"][:-1]}, "datasets"
    shortened = {
        key: _text(value, SHORT_TEXT_CHARS) if isinstance(value, str) else value
        for key, value in fields.items()
    }
    if shortened != fields:
        return shortened, "texts"
    # Nothing left but fixed-size parts, which fit by construction; drop the optional ones.
    for key in ("variant", "evaluation", "parent"):
        if fields.get(key) is not None:
            return {**fields, key: None}, key
    raise AssertionError("a minimal provenance exceeds MAX_PROVENANCE_BYTES")


def _text(value: object, limit: int = MAX_PROVENANCE_TEXT_CHARS) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _source(value: object, fallback: str) -> str:
    """An open word (``upload``, ``mlflow``, …): lower case, at most 32 characters."""
    word = "".join(
        c for c in str(value or fallback).lower() if c.isascii() and (c.isalnum() or c in "._-")
    )[:SOURCE_CHARS]
    return word if word and word[0].isalnum() else "unknown"


def _params(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    items = sorted((str(k), v) for k, v in value.items() if str(k) and v is not None)
    return {
        _text(k) or "?": _text(v if not isinstance(v, (dict, list)) else str(v)) or ""
        for k, v in items[:MAX_PROVENANCE_ENTRIES]
    }


def _metrics(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    items = sorted(
        (str(k), float(v))
        for k, v in value.items()
        if str(k) and _is_number(v) and math.isfinite(float(v))
    )
    return {_text(k) or "?": v for k, v in items[:MAX_PROVENANCE_ENTRIES]}


def _datasets(value: object) -> list[DatasetRef]:
    if not isinstance(value, list):
        return []
    refs = [
        DatasetRef(
            name=_text(item.get("name")) or "?",
            digest=_text(item.get("digest")),
            source=_text(item.get("source")) or _text(item.get("source_uri")),
            context=_text(item.get("context"), NAME_CHARS),
        )
        for item in value
        if isinstance(item, Mapping)
    ]
    return refs[:MAX_PROVENANCE_DATASETS]


def _gate(report: Mapping[str, Any] | None) -> dict[str, float] | None:
    for key in GATE_REPORT_KEYS:
        gate = (report or {}).get(key)
        if isinstance(gate, Mapping):
            thresholds = sorted(
                (str(k)[:64], float(v))
                for k, v in gate.items()
                if str(k) and _is_number(v) and math.isfinite(float(v))
            )
            return dict(thresholds[:MAX_GATE_THRESHOLDS]) or None
    return None


def _summary(report: Mapping[str, Any] | None) -> EvaluationSummary | None:
    if not report:
        return None
    values: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        value = report.get(key)
        if _is_number(value) and math.isfinite(float(value)) and value >= 0:
            values[key] = int(value) if key == "samples" else float(value)
    return EvaluationSummary(**values) if values else None


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
