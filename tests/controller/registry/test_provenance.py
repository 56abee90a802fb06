"""What a version's release says about where it came from, built from rows (no database).

The lineage an import writes is untrusted and of any shape: every key optional, values of
any type, as large as a run logged. The provenance is always valid, deterministic and
within its bound.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.registry.lineage import lineage_graph_of
from controller.registry.provenance import ReleaseRequest, provenance_of
from controller.registry.tables import ModelVersion
from protocol import (
    MAX_PROVENANCE_BYTES,
    EvaluationSummary,
    ParentRef,
    Provenance,
    VariantRecipe,
)

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
MLFLOW_LINEAGE: dict[str, Any] = {
    "source": "mlflow",
    "source_uri": "models:/digits/3",
    "run_id": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
    "experiment": "digits-cnn",
    "params": {"lr": "0.001", "epochs": 20, "optimizer": "adam"},
    "metrics": {"val_accuracy": 0.973, "loss": 0.08},
    "datasets": [
        {"name": "digits-train", "digest": "9f8e7d6c", "source": "s3://data/train.parquet"},
        {"name": "digits-val", "digest": "1a2b3c4d", "context": "evaluation"},
    ],
    "mlflow_uri": "http://mlflow:5000",
}
REPORT: dict[str, Any] = {
    "samples": 360,
    "size_ratio": 0.27,
    "latency_ratio": 0.81,
    "accuracy_parent": 0.97,
    "accuracy_candidate": 0.968,
    "accuracy_drop_points": 0.2,
    "top1_agreement": 0.995,
    "reference": "labels",
}


def version(
    number: int,
    *,
    parent: ModelVersion | None = None,
    origin: str = "upload",
    **fields: Any,
) -> ModelVersion:
    return ModelVersion(
        id=number,
        model_name="digits",
        version=number,
        parent_id=parent.id if parent else None,
        origin=origin,
        status="accepted" if origin == "variant" else "registered",
        format="onnx",
        sha256=hashlib.sha256(f"digits:{number}".encode()).hexdigest(),
        size_bytes=1000,
        inputs=[],
        outputs=[],
        created_by="ci",
        created_at=T0,
        **fields,
    )


def test_an_upload_says_it_was_uploaded_by_whom_and_has_no_parent() -> None:
    v1 = version(1)
    v2 = version(2, parent=v1, lineage={"source": "upload", "filename": "digits.onnx"})
    for row in (v1, v2):  # before migration 0011 a row has no lineage
        provenance = provenance_of(row, [], ReleaseRequest(released_by="alice"))
        assert provenance.source == "upload"
        assert (provenance.parent, provenance.variant, provenance.evaluation) == (None, None, None)
        assert (provenance.created_by, provenance.released_by) == ("ci", "alice")
        assert provenance.approved_by is None


def test_an_import_carries_its_run_parameters_metrics_and_datasets() -> None:
    row = version(1, lineage=MLFLOW_LINEAGE)
    provenance = provenance_of(row, [], ReleaseRequest())
    assert provenance.source == "mlflow"
    assert provenance.source_uri == "models:/digits/3"
    assert provenance.run_id == MLFLOW_LINEAGE["run_id"]
    assert provenance.experiment == "digits-cnn"
    assert provenance.params == {"epochs": "20", "lr": "0.001", "optimizer": "adam"}
    assert provenance.metrics == {"loss": 0.08, "val_accuracy": 0.973}
    assert [(d.name, d.digest, d.source, d.context) for d in provenance.datasets] == [
        ("digits-train", "9f8e7d6c", "s3://data/train.parquet", None),
        ("digits-val", "1a2b3c4d", None, "evaluation"),
    ]
    assert provenance.trimmed == []


def test_a_variant_names_its_parent_recipe_and_evaluation_and_inherits_the_run() -> None:
    root = version(1, lineage=MLFLOW_LINEAGE)
    report = REPORT | {"gate": {"max_accuracy_drop_points": 1.0, "min_top1_agreement": 0.99}}
    fp16 = version(2, parent=root, origin="variant", variant_mode="fp16", report=REPORT)
    int8 = version(3, parent=fp16, origin="variant", variant_mode="int8-dynamic", report=report)

    provenance = provenance_of(int8, [fp16, root], ReleaseRequest())

    assert provenance.parent == ParentRef(model="digits", version=2, sha256=fp16.sha256)
    assert provenance.variant == VariantRecipe(
        mode="int8-dynamic", gate={"max_accuracy_drop_points": 1.0, "min_top1_agreement": 0.99}
    )
    assert provenance.evaluation == EvaluationSummary(
        samples=360,
        size_ratio=0.27,
        latency_ratio=0.81,
        accuracy_parent=0.97,
        accuracy_candidate=0.968,
        top1_agreement=0.995,
    )
    assert (provenance.source, provenance.run_id) == ("mlflow", MLFLOW_LINEAGE["run_id"])
    # Without thresholds in its report, a variant's recipe is its mode alone.
    assert provenance_of(fp16, [root], ReleaseRequest()).variant == VariantRecipe(mode="fp16")


def test_a_pipelines_approval_is_recorded() -> None:
    request = ReleaseRequest(
        released_by="pipeline:production",
        approved_by="bob",
        approved_at=T0,
        channel="production",
        pipeline="42",
    )
    provenance = provenance_of(version(1), [], request)
    assert (provenance.approved_by, provenance.approved_at) == ("bob", T0)
    assert (provenance.channel, provenance.pipeline) == ("production", "42")
    assert provenance.released_by == "pipeline:production"


def test_the_largest_lineage_is_trimmed_to_the_bound_and_says_so() -> None:
    long = "é" * 1000
    lineage = {
        "source": "mlflow",
        "source_uri": long,
        "run_id": long,
        "experiment": long,
        "params": {f"param_{i:03}_{long}": long for i in range(500)},
        "metrics": {f"metric_{i:03}_{long}": i / 7 for i in range(500)},
        "datasets": [{"name": long, "digest": long, "source": long} for _ in range(100)],
    }
    root = version(1, lineage=lineage)
    variant = version(2, parent=root, origin="variant", variant_mode="int8-static", report=REPORT)
    request = ReleaseRequest(released_by="x" * 500, approved_by="y" * 500, channel="z" * 500)

    provenance = provenance_of(variant, [root], request)

    assert provenance.size_bytes() <= MAX_PROVENANCE_BYTES
    assert Provenance.model_validate(provenance.model_dump()) == provenance
    assert set(provenance.trimmed) >= {"params", "metrics", "datasets"}
    assert provenance.parent is not None
    assert provenance.variant is not None
    assert provenance == provenance_of(variant, [root], request)  # deterministic


@pytest.mark.parametrize(
    "lineage",
    [
        {},
        {"source": None, "params": None, "metrics": None, "datasets": None},
        {"source": "MLflow Registry!", "params": ["lr"], "metrics": "0.9", "datasets": "d"},
        {"source": "-x", "params": {"": "v", "k": None, "nested": {"a": 1}}},
        {"metrics": {"nan": math.nan, "inf": math.inf, "flag": True, "ok": 1, "s": "2"}},
        {"datasets": [{"digest": "abc"}, "not a dataset", {"name": {"deep": 1}}]},
        {"run_id": {"not": "text"}, "experiment": 7, "source_uri": ["a"]},
    ],
)
def test_any_stored_lineage_makes_a_valid_provenance(lineage: dict[str, Any]) -> None:
    provenance = provenance_of(version(1, lineage=lineage), [], ReleaseRequest())
    assert Provenance.model_validate(provenance.model_dump()) == provenance
    assert all(math.isfinite(value) for value in provenance.metrics.values())


def test_the_lineage_graph_marks_derived_and_succeeding_versions() -> None:
    v1 = version(1, lineage=MLFLOW_LINEAGE)
    v2 = version(2, parent=v1, origin="variant", variant_mode="int8-dynamic")
    v3 = version(3, parent=v2, lineage={"source": "upload"})
    v4 = version(4, parent=v3, origin="variant", variant_mode="fp16")

    graph = lineage_graph_of("digits", [v4, v2, v3, v1], released_ids={2})

    assert [n.version for n in graph.nodes] == [1, 2, 3, 4]
    assert [(e.parent, e.child, e.kind) for e in graph.edges] == [
        (1, 2, "derived"),
        (2, 3, "succeeds"),
        (3, 4, "derived"),
    ]
    by_version = {n.version: n for n in graph.nodes}
    assert by_version[2].released
    assert not by_version[1].released
    assert (by_version[2].source, by_version[2].lineage_version) == ("mlflow", 1)
    assert by_version[2].run_id == MLFLOW_LINEAGE["run_id"]
    assert (by_version[4].source, by_version[4].lineage_version) == ("upload", 3)


def test_a_parent_loop_in_the_rows_does_not_hang_the_graph() -> None:
    v1 = version(1, origin="variant", variant_mode="fp16")
    v2 = version(2, parent=v1, origin="variant", variant_mode="fp16")
    v1.parent_id = v2.id
    graph = lineage_graph_of("digits", [v1, v2], released_ids=set())
    assert len(graph.nodes) == 2
    assert [n.source for n in graph.nodes] == [None, None]  # no root: no known source
    assert provenance_of(v2, [v1], ReleaseRequest()).source == "unknown"
