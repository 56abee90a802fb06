"""Uploads are streamed to disk with a limit; bad multipart bodies get a 400, not a 500."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.settings import Settings
from controller.tokens import Role
from tests.controller.conftest import TEST_PASSPHRASE, bearer, ctx

URL = "/api/v1/models/digits/versions"
SMALL_LIMIT_BYTES = 1000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_upload_bytes": SMALL_LIMIT_BYTES})


def leftover_uploads(app: FastAPI) -> list[Path]:
    directory = ctx(app).settings.work_dir / "uploads"
    return list(directory.iterdir()) if directory.exists() else []


def test_oversized_model_is_refused_and_leaves_nothing_on_disk(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    response = client.post(
        URL,
        headers=bearer(tokens[Role.OPERATOR]),
        files={"model": ("big.onnx", b"\0" * (SMALL_LIMIT_BYTES + 1))},
    )
    assert response.status_code == 413
    assert "exceeds 1000 bytes" in response.json()["detail"]
    assert leftover_uploads(app) == []


@pytest.mark.parametrize(
    ("files", "data", "status", "reason"),
    [
        ({"weights": ("m.onnx", b"x")}, {}, 400, "unexpected file part 'weights'"),
        ({"model": ("m.onnx", b"x")}, {"note": "hi"}, 400, "unexpected field 'note'"),
        ({"validation": ("v.npz", b"x")}, {}, 400, "needs a file part named 'model'"),
        ({}, {"allow_signature_change": "true"}, 400, "multipart/form-data"),
        ({"model": ("m.onnx", b"x")}, {"allow_signature_change": "maybe"}, 400, "true or false"),
        ({"model": ("m.pt", b"x")}, {}, 422, "only .onnx and .tflite"),
        ({"model": ("m.onnx", b"")}, {}, 422, "empty"),
    ],
)
def test_malformed_upload_gets_a_clear_refusal(
    app: FastAPI,
    client: TestClient,
    tokens: dict[Role, str],
    files: dict[str, tuple[str, bytes]],
    data: dict[str, str],
    status: int,
    reason: str,
) -> None:
    response = client.post(
        URL, headers=bearer(tokens[Role.OPERATOR]), files=files or None, data=data
    )
    assert response.status_code == status, response.text
    assert reason in response.json()["detail"]
    assert leftover_uploads(app) == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{}"),
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=x", b"garbage without boundaries"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data\r\n\r\nv\r\n--x--",
        ),
    ],
)
def test_broken_multipart_body_is_a_400(
    client: TestClient, tokens: dict[Role, str], content_type: str, body: bytes
) -> None:
    headers = {**bearer(tokens[Role.OPERATOR]), "Content-Type": content_type}
    response = client.post(URL, headers=headers, content=body)
    assert response.status_code == 400, response.text


def test_invalid_model_name_is_a_422(client: TestClient, tokens: dict[Role, str]) -> None:
    response = client.post(
        "/api/v1/models/..%2Fetc/versions",
        headers=bearer(tokens[Role.OPERATOR]),
        files={"model": ("m.onnx", b"x")},
    )
    assert response.status_code in (404, 422)


def test_app_restarts_on_the_same_data_dir(settings: Settings) -> None:
    # Keys exist and migrations are applied: a second start must reuse both.
    first = create_app(settings, environ={"EDGEFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE})
    key_id = ctx(first).signer.release_key.key_id
    ctx(first).engine.dispose()
    second = create_app(settings, environ={"EDGEFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE})
    assert ctx(second).signer.release_key.key_id == key_id
    ctx(second).engine.dispose()
