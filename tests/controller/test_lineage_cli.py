"""``edgefleet model show`` draws the lineage; ``doc verify`` says where a release came from;
``model push --channel`` hands the version to a channel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from apiclient import ControllerClient
from controller.cli import common
from controller.cli import main as controller_cli
from controller.cli.lineage_text import lineage_tree_lines
from controller.tokens import Role
from tests.controller.conftest import ctx
from tests.controller.registry.test_lineage_api import lineage_fixture
from tests.controller.registry.test_provenance import MLFLOW_LINEAGE
from tests.factories import NOW, make_deployment, make_release
from tests.protocol.test_provenance import largest_provenance, rich_provenance
from tests.security.http_server import ServedController, controller_settings, served


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ServedController]:
    with served(controller_settings(tmp_path)) as controller:
        lineage_fixture(controller.app)
        yield controller


def edgefleet(controller: ServedController, *args: str) -> str:
    env = {
        "EDGEFLEET_URL": f"http://127.0.0.1:{controller.port}",
        "EDGEFLEET_TOKEN": controller.token(Role.VIEWER),
        "COLUMNS": "200",
    }
    result = CliRunner().invoke(controller_cli.app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_model_show_draws_the_lineage_tree(controller: ServedController) -> None:
    run = MLFLOW_LINEAGE["run_id"][:12]
    lines = edgefleet(controller, "model", "show", "digits").splitlines()
    assert lines == [
        "digits",
        f"├── v1  upload  registered  released  from mlflow models:/digits/3 (run {run})",
        "│   └── v2  int8-dynamic variant  accepted",
        "└── v3  upload  registered  after v2  from upload",
    ]


def test_model_show_json_is_the_apis_lineage(controller: ServedController) -> None:
    graph = json.loads(edgefleet(controller, "model", "show", "digits", "--json"))
    assert [n["version"] for n in graph["nodes"]] == [1, 2, 3]
    assert {"parent": 1, "child": 2, "kind": "derived"} in graph["edges"]


def test_model_show_version_says_where_it_came_from(controller: ServedController) -> None:
    out = edgefleet(controller, "model", "show", "digits:1")
    assert "lineage:" in out
    assert "mlflow models:/digits/3" in out
    assert f"run:            {MLFLOW_LINEAGE['run_id']} (experiment digits-cnn)" in out
    assert "params:         epochs=20, lr=0.001, optimizer=adam" in out
    assert "metrics:        loss=0.08, val_accuracy=0.973" in out
    assert "dataset:        digits-train digest 9f8e7d6c (s3://data/train.parquet)" in out

    variant = edgefleet(controller, "model", "show", "digits:2")
    assert "lineage: (inherited from digits:1)" in variant
    assert MLFLOW_LINEAGE["run_id"] in variant


def test_a_tree_with_a_parent_loop_shows_each_version_once() -> None:
    graph = {
        "model": "m",
        "nodes": [
            {"version": v, "origin": "variant", "variant_mode": "fp16", "status": "accepted"}
            for v in (1, 2)
        ],
        "edges": [
            {"parent": 1, "child": 2, "kind": "derived"},
            {"parent": 2, "child": 1, "kind": "derived"},
        ],
    }
    lines = lineage_tree_lines(graph)
    assert len(lines) == 3
    assert sum("v1 " in line for line in lines) == 1


def doc_verify(app: FastAPI, tmp_path: Path, provenance: object) -> str:
    release = make_release(provenance=provenance, created_at=NOW)
    document = tmp_path / "release.json"
    document.write_bytes(release.sign([ctx(app).signer.release_key]).to_bytes())
    trust_root = ctx(app).settings.data_dir / "keys" / "trust-root.json"
    result = CliRunner().invoke(
        controller_cli.app,
        ["doc", "verify", "--trust-root", str(trust_root), str(document)],
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def test_doc_verify_prints_the_provenance_of_a_verified_release(
    app: FastAPI, tmp_path: Path
) -> None:
    out = doc_verify(app, tmp_path, rich_provenance())
    block = out[out.index("provenance:") :].splitlines()
    assert block == [
        "provenance:",
        "  source:         mlflow models:/digits/3",
        f"  run:            {'0f' * 16} (experiment digits-cnn)",
        "  params:         epochs=20, lr=0.001",
        "  metrics:        val_accuracy=0.97",
        "  dataset:        digits-train digest d1g35t (s3://x/y)",
        f"  derived from:   digits:1 (sha256 {'ab' * 32})",
        "  recipe:         int8-dynamic, gate max_accuracy_drop_points=1",
        "  evaluation:     accuracy 0.97 -> 0.969",
        "  channel:        production (pipeline pl-0001)",
        f"  approved by:    alice at {NOW.isoformat()}",
        "  registered by:  ci",
        "  released by:    pipeline",
    ]
    assert out.index("result:       verified") < out.index("provenance:")


def test_doc_verify_says_what_was_trimmed_and_when_there_is_none(
    app: FastAPI, tmp_path: Path
) -> None:
    largest = largest_provenance().model_copy(update={"trimmed": ["params"]})
    assert "  trimmed:        params (to fit the release's bound)" in doc_verify(
        app, tmp_path, largest
    )
    assert "provenance:   none" in doc_verify(app, tmp_path, None)


def test_doc_verify_prints_the_provenance_of_a_deployments_release(
    app: FastAPI, tmp_path: Path
) -> None:
    signer = ctx(app).signer
    release = make_release(provenance=rich_provenance()).sign([signer.release_key])
    now = datetime.now(UTC)
    deployment = make_deployment(release, issued_at=now, expires=now + timedelta(hours=1))
    document = tmp_path / "deployment.json"
    document.write_bytes(deployment.sign([signer.deployment_key]).to_bytes())
    trust_root = ctx(app).settings.data_dir / "keys" / "trust-root.json"
    result = CliRunner().invoke(
        controller_cli.app, ["doc", "verify", "--trust-root", str(trust_root), str(document)]
    )
    assert result.exit_code == 0, result.output
    assert "document:     Deployment" in result.stdout
    assert "  approved by:    alice" in result.stdout


def test_push_with_a_channel_sends_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.read())
        return httpx.Response(201, json={"version": 1, "model_name": "digits"})

    class Recording(ControllerClient):
        def __init__(self, base_url: str, token: str | None) -> None:
            super().__init__(base_url, token)
            self._http = httpx.Client(base_url=base_url, transport=httpx.MockTransport(answer))

    monkeypatch.setattr(common, "ControllerClient", Recording)
    model = tmp_path / "digits.onnx"
    model.write_bytes(b"onnx")
    for extra in ([], ["--channel", "production"]):
        result = CliRunner().invoke(
            controller_cli.app,
            ["model", "push", str(model), "--name", "digits", "--json", *extra],
            env={"EDGEFLEET_URL": "http://controller.test"},
        )
        assert result.exit_code == 0, result.output
    assert b'name="channel"' not in sent[0]
    assert b'name="channel"\r\n\r\nproduction\r\n' in sent[1]
