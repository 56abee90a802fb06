"""The lineage an import records, from what MLflow answered: pure, bounded, JSON-safe.

Everything MLflow answers is untrusted: any key may be missing or of the wrong type, and
a run may log thousands of parameters. The lineage keeps at most ``MAX_LINEAGE_ENTRIES``
parameters and metrics (the first by key, so the same run always gives the same
lineage), ``MAX_LINEAGE_DATASETS`` datasets, and cuts every string to
``MAX_LINEAGE_TEXT_CHARS``; non-finite and non-numeric metrics are dropped (a JSON column
on PostgreSQL refuses NaN). Keys with no value are left out.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = [
    "MAX_LINEAGE_DATASETS",
    "MAX_LINEAGE_ENTRIES",
    "MAX_LINEAGE_TEXT_CHARS",
    "bounded_text",
    "lineage_of",
    "mapping_at",
]

MAX_LINEAGE_ENTRIES = 64
MAX_LINEAGE_DATASETS = 16
MAX_LINEAGE_TEXT_CHARS = 256
# A dataset's source is JSON text; larger than this it is kept as (cut) text, unparsed.
MAX_SOURCE_JSON_CHARS = 64 * 1024


def lineage_of(
    *,
    source_uri: str,
    alias: str | None,
    mlflow_uri: str,
    version: dict[str, Any],
    artifact_uri: str,
    model_file: str,
    validation_file: str | None,
    run: dict[str, Any] | None,
    experiment: dict[str, Any] | None,
) -> dict[str, Any]:
    """What the version records of where it came from: bounded, JSON-safe, untrusted."""
    info = mapping_at(run, "info")
    data = mapping_at(run, "data")
    lineage: dict[str, Any] = {
        "source": "mlflow",
        "source_uri": bounded_text(source_uri),
        "alias": bounded_text(alias),
        "mlflow_uri": bounded_text(mlflow_uri),
        "model_source": bounded_text(version.get("source")),
        "artifact_uri": bounded_text(artifact_uri),
        "artifact_path": bounded_text(model_file),
        "validation_artifact": bounded_text(validation_file),
        "run_id": bounded_text(info.get("run_id") or version.get("run_id")),
        "run_name": bounded_text(info.get("run_name")),
        "experiment_id": bounded_text(info.get("experiment_id")),
        "experiment": bounded_text(mapping_at(experiment, "experiment").get("name")),
        "params": _params(data.get("params")),
        "metrics": _metrics(data.get("metrics")),
        "datasets": _datasets(mapping_at(run, "inputs").get("dataset_inputs")),
    }
    return {key: value for key, value in lineage.items() if value is not None}


def mapping_at(value: object, key: str) -> dict[str, Any]:
    inner = value.get(key) if isinstance(value, dict) else None
    return inner if isinstance(inner, dict) else {}


def bounded_text(value: object) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    return text[:MAX_LINEAGE_TEXT_CHARS] if text else None


def _params(value: object) -> dict[str, str]:
    pairs = [
        (key, bounded_text(item.get("value")) or "")
        for item in (value if isinstance(value, list) else [])
        if isinstance(item, dict) and (key := bounded_text(item.get("key")))
    ]
    return dict(sorted(pairs)[:MAX_LINEAGE_ENTRIES])


def _metrics(value: object) -> dict[str, float]:
    pairs = [
        (key, float(number))
        for item in (value if isinstance(value, list) else [])
        if isinstance(item, dict)
        and (key := bounded_text(item.get("key")))
        and isinstance(number := item.get("value"), (int, float))
        and not isinstance(number, bool)
        and math.isfinite(number)
    ]
    return dict(sorted(pairs)[:MAX_LINEAGE_ENTRIES])


def _datasets(value: object) -> list[dict[str, str]]:
    refs = []
    for item in value if isinstance(value, list) else []:
        dataset = mapping_at(item, "dataset")
        if not dataset:
            continue
        tags = item.get("tags") if isinstance(item, dict) else None
        context = next(
            (
                tag.get("value")
                for tag in (tags if isinstance(tags, list) else [])
                if isinstance(tag, dict) and tag.get("key") == "mlflow.data.context"
            ),
            None,
        )
        ref = {
            "name": bounded_text(dataset.get("name")),
            "digest": bounded_text(dataset.get("digest")),
            "source_type": bounded_text(dataset.get("source_type")),
            "source": _dataset_source(dataset.get("source")),
            "context": bounded_text(context),
        }
        refs.append({k: v for k, v in ref.items() if v is not None})
        if len(refs) == MAX_LINEAGE_DATASETS:
            break
    return refs


def _dataset_source(value: object) -> str | None:
    """MLflow's dataset source is JSON text such as ``{"uri": "s3://…"}``: its URI, if any."""
    text = bounded_text(value)
    if text is None or not isinstance(value, str):
        return text
    try:
        parsed = json.loads(value) if len(value) <= MAX_SOURCE_JSON_CHARS else None
    except ValueError:
        return text
    if isinstance(parsed, dict):
        for key in ("uri", "url", "path", "table_name"):
            if isinstance(parsed.get(key), str):
                return bounded_text(parsed[key])
    return text
