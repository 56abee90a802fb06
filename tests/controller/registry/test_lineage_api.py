"""``GET /api/v1/models/{name}/lineage``: the graph of a model's versions, for viewers."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from controller.db import session_scope
from controller.registry.tables import ModelVersion
from controller.tokens import Role
from tests.controller.conftest import bearer, ctx
from tests.controller.fleet_fixtures import add_release
from tests.controller.registry.test_provenance import MLFLOW_LINEAGE


def lineage_fixture(app: FastAPI) -> None:
    """digits 1 (imported from MLflow, released), 2 its int8 variant, 3 a later upload."""
    context = ctx(app)
    add_release(context, "digits", 1)
    with session_scope(context.engine) as session:
        v1 = session.exec(select(ModelVersion).where(ModelVersion.version == 1)).one()
        v1.lineage = MLFLOW_LINEAGE
        session.add(v1)
        session.flush()
        v2 = ModelVersion(
            model_name="digits",
            version=2,
            parent_id=v1.id,
            origin="variant",
            variant_mode="int8-dynamic",
            status="accepted",
            format="onnx",
            sha256="2" * 64,
            size_bytes=10,
            inputs=[],
            outputs=[],
            created_by="test",
        )
        session.add(v2)
        session.flush()
        session.add(
            ModelVersion(
                model_name="digits",
                version=3,
                parent_id=v2.id,
                origin="upload",
                status="registered",
                format="onnx",
                sha256="3" * 64,
                size_bytes=10,
                inputs=[],
                outputs=[],
                lineage={"source": "upload"},
                created_by="test",
            )
        )


def test_lineage_lists_versions_and_their_edges(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    lineage_fixture(app)
    answer = client.get("/api/v1/models/digits/lineage", headers=bearer(tokens[Role.VIEWER]))
    assert answer.status_code == 200, answer.text
    graph = answer.json()
    assert graph["model"] == "digits"
    nodes = {n["version"]: n for n in graph["nodes"]}
    assert sorted(nodes) == [1, 2, 3]
    assert (nodes[1]["source"], nodes[1]["run_id"], nodes[1]["released"]) == (
        "mlflow",
        MLFLOW_LINEAGE["run_id"],
        True,
    )
    assert (nodes[2]["origin"], nodes[2]["variant_mode"], nodes[2]["status"]) == (
        "variant",
        "int8-dynamic",
        "accepted",
    )
    assert (nodes[2]["source"], nodes[2]["lineage_version"]) == ("mlflow", 1)
    assert (nodes[3]["source"], nodes[3]["lineage_version"]) == ("upload", 3)
    assert graph["edges"] == [
        {"parent": 1, "child": 2, "kind": "derived"},
        {"parent": 2, "child": 3, "kind": "succeeds"},
    ]


def test_lineage_of_an_unknown_model_is_404(client: TestClient, tokens: dict[Role, str]) -> None:
    answer = client.get("/api/v1/models/nope/lineage", headers=bearer(tokens[Role.VIEWER]))
    assert answer.status_code == 404


def test_lineage_needs_a_token(client: TestClient) -> None:
    assert client.get("/api/v1/models/digits/lineage").status_code == 401


def test_a_version_shows_its_recorded_lineage(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    lineage_fixture(app)
    viewer = bearer(tokens[Role.VIEWER])
    one = client.get("/api/v1/models/digits/versions/1", headers=viewer).json()
    two = client.get("/api/v1/models/digits/versions/2", headers=viewer).json()
    assert one["lineage"] == MLFLOW_LINEAGE
    assert two["lineage"] is None  # a variant inherits its root's: see the graph
