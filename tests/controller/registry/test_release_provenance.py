"""A signed release says where its model came from: upload, variant, import, approval."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from controller.db import session_scope
from controller.registry.releases import prepare_release, release_version
from controller.registry.tables import ModelVersion
from controller.tokens import Principal, Role
from protocol import Envelope, Provenance, Release, verify_document
from tests.controller.conftest import bearer, ctx
from tests.controller.registry.test_provenance import MLFLOW_LINEAGE
from tests.controller.registry.test_registry import Models, models, push

__all__ = ["models"]  # the module-scoped fixture, shared with test_registry

APPROVED_AT = datetime(2026, 12, 4, 13, 0, tzinfo=UTC)


def released(app: FastAPI, client: TestClient, token: str, name: str, version: int) -> Release:
    response = client.post(
        f"/api/v1/models/{name}/versions/{version}/release", headers=bearer(token)
    )
    assert response.status_code == 201, response.text
    envelope = Envelope.from_json_obj(response.json()["envelope"])
    return verify_document(envelope, Release, ctx(app).signer.trust_root)


def provenance(release: Release) -> Provenance:
    assert release.provenance is not None
    return release.provenance


def set_lineage(app: FastAPI, name: str, version: int, lineage: dict[str, object]) -> None:
    """What an import records, written straight into the row."""
    with session_scope(ctx(app).engine) as session:
        row = session.exec(
            select(ModelVersion).where(
                ModelVersion.model_name == name, ModelVersion.version == version
            )
        ).one()
        row.lineage = lineage
        session.add(row)


def test_an_uploads_release_says_uploaded_by_whom_and_released_by_whom(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    push(client, tokens[Role.OPERATOR], "digits", models["digits"])
    p = provenance(released(app, client, tokens[Role.OPERATOR], "digits", 1))
    assert p.source == "upload"
    assert (p.created_by, p.released_by) == ("test-operator", "test-operator")
    assert (p.parent, p.variant, p.evaluation, p.approved_by) == (None, None, None, None)


def test_a_variants_release_names_its_parent_recipe_and_evaluation(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    operator = tokens[Role.OPERATOR]
    parent = push(
        client, operator, "digits", models["digits"], validation=models["digits_validation"]
    )
    set_lineage(app, "digits", 1, MLFLOW_LINEAGE)
    variant = client.post(
        "/api/v1/models/digits/versions/1/variants",
        headers=bearer(operator),
        json={"mode": "int8-dynamic"},
    ).json()
    assert variant["status"] == "accepted", variant

    release = released(app, client, operator, "digits", 2)

    p = provenance(release)
    assert p.parent is not None
    assert (p.parent.model, p.parent.version, p.parent.sha256) == ("digits", 1, parent["sha256"])
    assert p.variant is not None
    assert p.variant.mode == "int8-dynamic"
    report = variant["report"]
    assert p.evaluation is not None
    assert p.evaluation.size_ratio == report["size_ratio"]
    assert p.evaluation.top1_agreement == report["top1_agreement"]
    assert p.evaluation.accuracy_candidate == report["accuracy_candidate"]
    # The variant records no lineage of its own: its run is its parent's.
    assert (p.source, p.run_id, p.experiment) == ("mlflow", MLFLOW_LINEAGE["run_id"], "digits-cnn")
    assert p.params["lr"] == "0.001"
    assert release.evaluation == report  # the full report stays beside the summary


def test_an_imported_versions_release_carries_its_run(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    push(client, tokens[Role.OPERATOR], "digits", models["digits"])
    set_lineage(app, "digits", 1, MLFLOW_LINEAGE)

    p = provenance(released(app, client, tokens[Role.OPERATOR], "digits", 1))

    assert (p.source, p.source_uri) == ("mlflow", "models:/digits/3")
    assert p.metrics == {"loss": 0.08, "val_accuracy": 0.973}
    assert [d.digest for d in p.datasets] == ["9f8e7d6c", "1a2b3c4d"]
    shown = client.get("/api/v1/models/digits/versions/1", headers=bearer(tokens[Role.VIEWER]))
    assert shown.json()["lineage"] == MLFLOW_LINEAGE


def test_a_pipelines_release_records_the_approval(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    push(client, tokens[Role.OPERATOR], "digits", models["digits"])
    engine = Principal(token_id="pipeline", name="pipeline:production", role=Role.OPERATOR)
    with session_scope(ctx(app).engine) as session:
        record, created = release_version(
            session,
            ctx(app),
            name="digits",
            version=1,
            principal=engine,
            approved_by="alice",
            approved_at=APPROVED_AT,
            channel="production",
            pipeline="7",
        )
        envelope = Envelope.from_bytes(record.envelope.encode())
    assert created
    p = provenance(verify_document(envelope, Release, ctx(app).signer.trust_root))
    assert (p.approved_by, p.approved_at) == ("alice", APPROVED_AT)
    assert (p.channel, p.pipeline, p.released_by) == ("production", "7", "pipeline:production")


def test_a_release_prepared_for_offline_signing_carries_the_provenance(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    push(client, tokens[Role.OPERATOR], "digits", models["digits"])
    set_lineage(app, "digits", 1, MLFLOW_LINEAGE)
    answer = client.post(
        "/api/v1/models/digits/versions/1/release/prepare", headers=bearer(tokens[Role.OPERATOR])
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["provenance"]["run_id"] == MLFLOW_LINEAGE["run_id"]

    with session_scope(ctx(app).engine) as session:
        release = prepare_release(session, ctx(app), name="digits", version=1, approved_by="bob")
    assert provenance(release).approved_by == "bob"
