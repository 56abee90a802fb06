"""The registry with real models: push, refuse, quantize, release, fetch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from controller.tokens import Role
from protocol import Envelope, Release, verify_document
from simulator.demo_models import build_digits_model
from tensors import read_check_bundle
from tests.controller.conftest import bearer, ctx
from tests.model_factory import broken_models, small_cnn, tiny_tflite

Models = dict[str, Path]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    directory = tmp_path_factory.mktemp("models")
    digits, validation = build_digits_model(directory)
    return {
        "digits": digits,
        "digits_validation": validation,
        "cnn": small_cnn(directory),
        "tflite": tiny_tflite(directory),
        **{f"broken_{k}": v for k, v in broken_models(directory, digits).items()},
    }


def push(
    client: TestClient,
    token: str,
    name: str,
    model: Path,
    *,
    validation: Path | None = None,
    allow_signature_change: bool = False,
    filename: str | None = None,
) -> dict[str, object]:
    files = {"model": (filename or model.name, model.read_bytes())}
    if validation is not None:
        files["validation"] = (validation.name, validation.read_bytes())
    response = client.post(
        f"/api/v1/models/{name}/versions",
        headers=bearer(token),
        files=files,
        data={"allow_signature_change": str(allow_signature_change).lower()},
    )
    return {**response.json(), "http_status": response.status_code}


def test_push_registers_a_version_with_its_signature_and_stores_it_by_hash(
    client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    row = push(
        client,
        tokens[Role.OPERATOR],
        "digits",
        models["digits"],
        validation=models["digits_validation"],
    )
    assert row["http_status"] == 201, row
    assert (row["version"], row["format"], row["origin"]) == (1, "onnx", "upload")
    assert row["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert row["has_validation_set"] is True
    digest = hashlib.sha256(models["digits"].read_bytes()).hexdigest()
    assert row["sha256"] == digest
    artifact = client.get(f"/artifacts/sha256/{digest}", headers=bearer(tokens[Role.VIEWER]))
    assert artifact.content == models["digits"].read_bytes()


def test_versions_are_numbered_per_model_with_lineage(
    client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    first = push(client, tokens[Role.OPERATOR], "digits", models["digits"])
    second = push(client, tokens[Role.OPERATOR], "digits", models["digits"])
    other = push(client, tokens[Role.OPERATOR], "other", models["digits"])
    assert (first["version"], second["version"], other["version"]) == (1, 2, 1)
    assert second["parent_version"] == 1


def test_signature_change_is_refused_unless_allowed(
    client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    push(client, tokens[Role.OPERATOR], "digits", models["digits"])
    refused = push(client, tokens[Role.OPERATOR], "digits", models["cnn"])
    assert refused["http_status"] == 409
    assert "I/O signature differs" in str(refused["detail"])
    allowed = push(
        client, tokens[Role.OPERATOR], "digits", models["cnn"], allow_signature_change=True
    )
    assert allowed["http_status"] == 201
    assert allowed["version"] == 2  # the refused push used no version number


BROKEN = {
    "truncated", "bitflip_length", "bitflip_op_type", "huge_initializer", "huge_input",
    "huge_inferred", "external_parent", "external_absolute", "external_symlink",
    "future_opset", "random_bytes", "fake", "empty",
}  # fmt: skip


def test_broken_models_are_refused_with_a_reason_and_the_server_keeps_serving(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    broken = {key.removeprefix("broken_"): path for key, path in models.items() if "broken_" in key}
    assert set(broken) == BROKEN, sorted(broken)
    for kind, path in broken.items():
        row = push(client, tokens[Role.OPERATOR], "digits", path, filename=path.name)
        assert row["http_status"] == 422, (kind, row)
        assert row["detail"], kind
    assert client.get("/readyz").json() == {"status": "ready"}
    with ctx(app).engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM model_versions")).scalar() == 0


def test_validation_set_that_does_not_fit_the_model_is_refused(
    client: TestClient, tokens: dict[Role, str], models: Models, tmp_path: Path
) -> None:
    import numpy as np

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, pixels=np.zeros((3, 64), dtype=np.float32))
    row = push(client, tokens[Role.OPERATOR], "digits", models["digits"], validation=wrong)
    assert row["http_status"] == 422
    assert row["kind"] == "bad_validation_set"


def test_quantize_then_release_signs_exactly_the_checked_artifact(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    operator = bearer(tokens[Role.OPERATOR])
    push(
        client,
        tokens[Role.OPERATOR],
        "digits",
        models["digits"],
        validation=models["digits_validation"],
    )
    variant = client.post(
        "/api/v1/models/digits/versions/1/variants", headers=operator, json={"mode": "int8-dynamic"}
    ).json()
    assert variant["status"] == "accepted", variant
    assert (variant["version"], variant["parent_version"]) == (2, 1)
    assert variant["report"]["size_ratio"] < 1
    assert variant["report"]["accuracy_drop_points"] <= 1.0

    response = client.post("/api/v1/models/digits/versions/2/release", headers=operator)
    assert response.status_code == 201, response.text
    envelope = Envelope.from_json_obj(response.json()["envelope"])
    release = verify_document(envelope, Release, ctx(app).signer.trust_root)
    assert release.artifact.sha256 == variant["sha256"]
    assert release.artifact.length == variant["size_bytes"]
    bundle = read_check_bundle(ctx(app).store.get(release.check_bundle.sha256).path)
    assert release.check_bundle.length == ctx(app).store.get(release.check_bundle.sha256).size_bytes
    assert len(bundle.golden) == ctx(app).settings.golden_count
    assert bundle.reference_profile is not None
    assert bundle.reference_profile.source == "validation"
    assert release.evaluation == variant["report"]

    again = client.post("/api/v1/models/digits/versions/2/release", headers=operator)
    assert again.status_code == 200
    assert again.json()["envelope"] == response.json()["envelope"]


def test_rejected_variant_is_never_released(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    push(client, tokens[Role.OPERATOR], "digits", models["digits"])
    with ctx(app).engine.begin() as connection:
        connection.execute(text("UPDATE model_versions SET status = 'rejected'"))
    response = client.post(
        "/api/v1/models/digits/versions/1/release", headers=bearer(tokens[Role.OPERATOR])
    )
    assert response.status_code == 409
    assert "rejected by the quality gate" in response.json()["detail"]


def test_tflite_model_gets_a_dynamic_range_int8_variant(
    client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    row = push(client, tokens[Role.OPERATOR], "tiny", models["tflite"])
    assert (row["http_status"], row["format"]) == (201, "tflite")
    variant = client.post(
        "/api/v1/models/tiny/versions/1/variants",
        headers=bearer(tokens[Role.OPERATOR]),
        json={"mode": "tflite-int8-dynamic"},
    ).json()
    assert variant["format"] == "tflite", variant
    assert variant["size_bytes"] < row["size_bytes"]


def test_artifacts_support_range_etag_and_immutable_caching(
    client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    row = push(client, tokens[Role.OPERATOR], "digits", models["digits"])
    url = f"/artifacts/sha256/{row['sha256']}"
    viewer = bearer(tokens[Role.VIEWER])
    data = models["digits"].read_bytes()

    partial = client.get(url, headers={**viewer, "Range": "bytes=100-199"})
    assert partial.status_code == 206
    assert partial.content == data[100:200]
    assert partial.headers["content-range"] == f"bytes 100-199/{len(data)}"

    full = client.get(url, headers=viewer)
    assert full.headers["etag"] == f'"sha256-{row["sha256"]}"'
    assert "immutable" in full.headers["cache-control"]
    cached = client.get(url, headers={**viewer, "If-None-Match": full.headers["etag"]})
    assert cached.status_code == 304
    assert client.get(f"/artifacts/sha256/{'0' * 64}", headers=viewer).status_code == 404


def test_push_is_audited_with_the_artifact_hash(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    row = push(client, tokens[Role.OPERATOR], "digits", models["digits"])
    with ctx(app).engine.connect() as connection:
        entries = connection.execute(text("SELECT action, target, actor FROM audit_log")).all()
    assert entries == [
        (
            "POST /api/v1/models/{name}/versions",
            "digits:1",
            f"test-operator ({tokens[Role.OPERATOR].split('_')[1]})",
        )
    ]
    assert row["created_by"] == "test-operator"
