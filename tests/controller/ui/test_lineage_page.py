"""The model page draws the lineage graph and says where each version came from."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from controller.db import session_scope
from controller.registry.lineage import LineageEdge, LineageGraph, LineageNode
from controller.registry.tables import ModelVersion, ReleaseRecord
from controller.tokens import Role
from controller.ui.lineage import DOT_R, LANE_W, ROW_H, draw_lineage
from tests.controller.conftest import ctx
from tests.controller.registry.test_lineage_api import lineage_fixture
from tests.controller.registry.test_provenance import MLFLOW_LINEAGE
from tests.factories import make_release
from tests.protocol.test_provenance import rich_provenance

from .conftest import EVIL, log_in

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture
def viewer(app: FastAPI, client: TestClient, tokens: dict[Role, str]) -> TestClient:
    """digits 1 imported from MLflow (released), 2 its int8 variant released with a signed
    provenance, 3 a later upload whose recorded lineage holds markup."""
    context = ctx(app)
    lineage_fixture(app)
    release = make_release(model="digits", version=2, provenance=rich_provenance())
    with session_scope(context.engine) as session:
        rows = {r.version: r for r in session.exec(select(ModelVersion)).all()}
        rows[3].lineage = {
            "source": "upload",
            "source_uri": EVIL,
            "params": {EVIL: EVIL},
            "metrics": ["not", "a", "map"],
            "datasets": {"not": "a list"},
        }
        session.add(rows[3])
        session.add(
            ReleaseRecord(
                model_version_id=rows[2].id or 0,
                model_name="digits",
                version=2,
                sha256=rows[2].sha256,
                envelope=release.sign([context.signer.release_key]).to_bytes().decode(),
                created_by="test",
            )
        )
    log_in(client, tokens[Role.VIEWER])
    return client


def test_the_model_page_draws_every_version_in_the_lineage_graph(viewer: TestClient) -> None:
    html = viewer.get("/ui/models/digits").text
    graph = html[html.index('id="lineage"') : html.index("</section>", html.index('id="lineage"'))]

    assert "<svg" in graph
    assert re.findall(r'data-node="(\d+)"', graph) == ["1", "2", "3"]
    assert "v1 · upload · registered · released" in graph
    assert "v2 · int8-dynamic variant · accepted · released" in graph
    assert "v3 · upload · registered" in graph
    assert f"mlflow run {MLFLOW_LINEAGE['run_id'][:12]}" in graph
    assert "(of v1)" in graph  # the variant's source is its root's
    assert graph.count('class="edge derived"') == 1
    assert graph.count('class="edge succeeds"') == 1
    assert "<script" not in graph


def test_a_version_shows_its_lineage_and_its_signed_provenance(viewer: TestClient) -> None:
    html = viewer.get("/ui/models/digits").text
    v1 = html[html.index('id="v1"') :]
    v2 = html[html.index('id="v2"') : html.index('id="v1"')]

    assert "Where it came from" in v1
    assert MLFLOW_LINEAGE["run_id"] in v1
    assert "in experiment digits-cnn" in v1
    assert "lr=0.001" in v1
    assert "digits-train" in v1
    assert "9f8e7d6c" in v1

    assert "recorded on version 1" in v2
    assert "Signed provenance" in v2
    assert "Derived from</dt><dd>digits:1" in v2
    assert "max_accuracy_drop_points=1" in v2
    assert "alice" in v2
    assert "production (pipeline pl-0001)" in v2


def test_a_release_without_provenance_says_so(viewer: TestClient) -> None:
    html = viewer.get("/ui/models/digits").text
    v1 = html[html.index('id="v1"') :]
    assert "signed without a provenance block" in v1


def test_a_recorded_lineage_is_escaped_and_any_shape_renders(viewer: TestClient) -> None:
    response = viewer.get("/ui/models/digits")
    assert response.status_code == 200
    assert EVIL not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text


def node(version: int, origin: str = "upload", **fields: object) -> LineageNode:
    values: dict[str, object] = {
        "version": version,
        "origin": origin,
        "variant_mode": "fp16" if origin == "variant" else None,
        "status": "registered",
        "released": False,
        "sha256": "0" * 64,
        "created_by": "ci",
        "created_at": T0,
        "lineage_version": version,
        "source": origin,
        "source_uri": None,
        "run_id": None,
        "experiment": None,
    }
    return LineageNode(**(values | fields))  # type: ignore[arg-type]


def test_variants_are_indented_under_their_parent_and_uploads_stay_in_the_first_lane() -> None:
    graph = LineageGraph(
        model="m",
        nodes=[node(1), node(2, "variant"), node(3, "variant"), node(4), node(5, "variant")],
        edges=[
            LineageEdge(parent=1, child=2, kind="derived"),
            LineageEdge(parent=2, child=3, kind="derived"),
            LineageEdge(parent=3, child=4, kind="succeeds"),
            LineageEdge(parent=4, child=5, kind="derived"),
        ],
    )
    drawing = draw_lineage(graph)
    lanes = [(r.node.version, round((r.x - drawing.rows[0].x) / LANE_W)) for r in drawing.rows]
    assert lanes == [(1, 0), (2, 1), (3, 2), (4, 0), (5, 1)]
    assert [r.y for r in drawing.rows] == [drawing.rows[0].y + i * ROW_H for i in range(5)]
    succeeds = next(e for e in drawing.edges if e.kind == "succeeds")
    # From v3's dot (lane 2) down to v4's row, then left to v4's dot in lane 0.
    assert succeeds.d.endswith(f"H{drawing.rows[3].x + DOT_R:g}")
    assert drawing.width >= 480


def test_an_empty_model_draws_nothing() -> None:
    assert draw_lineage(LineageGraph(model="m", nodes=[], edges=[])).empty
