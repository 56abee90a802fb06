"""A device token downloads only what a release names: its model and its check bundle.

Found in the security review: a device token could download any blob by digest,
validation sets included (a customer's labelled data, on every device of the fleet).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from controller.tokens import Role
from protocol import Envelope, Release
from tests.controller import conftest as controller_fixtures
from tests.controller.conftest import bearer
from tests.controller.registry.test_registry import push
from tests.model_factory import fp16_overflow_classifier

database_url, app = controller_fixtures.database_url, controller_fixtures.app
settings, client, tokens = (
    controller_fixtures.settings,
    controller_fixtures.client,
    controller_fixtures.tokens,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small classifier and its validation set."""
    return fp16_overflow_classifier(tmp_path_factory.mktemp("models"))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def release(client: TestClient, tokens: dict[Role, str], version: int) -> Release:
    response = client.post(
        f"/api/v1/models/pressure/versions/{version}/release", headers=bearer(tokens[Role.OPERATOR])
    )
    assert response.status_code == 201, response.text
    return Release.from_unverified_envelope(Envelope.from_json_obj(response.json()["envelope"]))


def download(client: TestClient, token: str, digest: str) -> httpx.Response:
    response: httpx.Response = client.get(f"/artifacts/sha256/{digest}", headers=bearer(token))
    return response


def test_a_device_token_cannot_download_a_validation_set_by_digest(
    client: TestClient, tokens: dict[Role, str], model: tuple[Path, Path]
) -> None:
    onnx_file, validation = model
    pushed = push(client, tokens[Role.OPERATOR], "pressure", onnx_file, validation=validation)
    assert pushed["http_status"] == 201, pushed
    released = release(client, tokens, 1)
    device, viewer = tokens[Role.DEVICE], tokens[Role.VIEWER]

    stolen = download(client, device, sha256_of(validation))
    never_stored = download(client, device, "0" * 64)

    assert download(client, viewer, sha256_of(validation)).status_code == 200  # it is stored
    assert stolen.status_code == 404
    # Word for word what a digest nobody stored gets, but for the digest.
    assert stolen.json()["kind"] == never_stored.json()["kind"]
    assert (
        stolen.json()["detail"].replace(sha256_of(validation), "0" * 64)
        == (never_stored.json()["detail"])
    )
    # What the release names still downloads, conditional requests included.
    artifact = download(client, device, released.artifact.sha256)
    assert artifact.content == onnx_file.read_bytes()
    assert download(client, device, released.check_bundle.sha256).status_code == 200
    etag = {"If-None-Match": artifact.headers["etag"]}
    revalidated = client.get(
        f"/artifacts/sha256/{sha256_of(validation)}", headers={**bearer(device), **etag}
    )
    assert revalidated.status_code == 404


def test_a_device_token_cannot_download_a_version_until_it_is_released(
    client: TestClient, tokens: dict[Role, str], model: tuple[Path, Path]
) -> None:
    onnx_file, _ = model
    pushed = push(client, tokens[Role.OPERATOR], "pressure", onnx_file)
    device = tokens[Role.DEVICE]

    assert download(client, device, str(pushed["sha256"])).status_code == 404
    assert download(client, tokens[Role.OPERATOR], str(pushed["sha256"])).status_code == 200

    released = release(client, tokens, 1)  # recorded after the device was refused
    assert download(client, device, released.artifact.sha256).status_code == 200
    assert download(client, device, released.check_bundle.sha256).status_code == 200
