"""The release key can stay off the controller: releases are prepared, signed elsewhere, uploaded.

Found in the security review: the release key was always loaded on the controller, so a
compromised controller (or any operator token) could ship any model, against
ARCHITECTURE §3. With ``release_key = "offline"`` the controller holds only the deployment
key; a release is accepted only when it verifies against the trust root's release role.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from controller.app import create_app
from controller.cli.main import app as controller_cli
from controller.db import session_scope
from controller.keystore import KeyStore
from controller.settings import Settings
from controller.tokens import Role, create_token
from protocol import Envelope, Release, SigningKey, verify_document
from protocol import Role as KeyRole
from simulator.demo_models import build_digits_model
from tests.controller import conftest as controller_fixtures
from tests.controller.conftest import TEST_PASSPHRASE, bearer
from tests.controller.registry.test_registry import push

settings = controller_fixtures.settings
ENV = {"EDGEFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE}


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'controller.db'}"


@pytest.fixture
def offline(settings: Settings, tmp_path: Path) -> Iterator[tuple[TestClient, str, Path]]:
    """A controller whose release key was moved to another place before it started."""
    create_app(settings, environ=ENV).state.ctx.engine.dispose()  # creates the keys
    release_key = tmp_path / "offline" / "release.key.pem"
    release_key.parent.mkdir()
    shutil.move(KeyStore(settings.keys_dir).private_key_path(KeyRole.RELEASE), release_key)
    app = create_app(settings.model_copy(update={"release_key": "offline"}), environ=ENV)
    with session_scope(app.state.ctx.engine) as session:
        operator = create_token(session, name="op", role=Role.OPERATOR)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, operator, release_key
    app.state.ctx.engine.dispose()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_digits_model(tmp_path_factory.mktemp("digits"))


def prepared(client: TestClient, operator: str, digits: tuple[Path, Path]) -> dict[str, Any]:
    model, validation = digits
    assert push(client, operator, "digits", model, validation=validation)["http_status"] == 201
    answer = client.post(
        "/api/v1/models/digits/versions/1/release/prepare", headers=bearer(operator)
    )
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    return document


def upload(client: TestClient, operator: str, envelope: Envelope) -> Any:
    return client.post(
        "/api/v1/models/digits/versions/1/release/signed",
        headers=bearer(operator),
        json=envelope.to_json_obj(),
    )


def test_an_operator_token_cannot_create_a_release_on_an_offline_key_controller(
    offline: tuple[TestClient, str, Path], digits: tuple[Path, Path]
) -> None:
    client, operator, _key = offline
    model, validation = digits
    assert push(client, operator, "digits", model, validation=validation)["http_status"] == 201
    refused = client.post("/api/v1/models/digits/versions/1/release", headers=bearer(operator))
    assert refused.status_code == 409
    assert "offline" in refused.json()["detail"]


def test_a_release_prepared_signed_offline_and_uploaded_is_recorded(
    offline: tuple[TestClient, str, Path], digits: tuple[Path, Path], tmp_path: Path
) -> None:
    client, operator, release_key = offline
    unsigned = tmp_path / "digits-1.json"
    unsigned.write_text(json.dumps(prepared(client, operator, digits)))

    signed = CliRunner().invoke(
        controller_cli, ["release", "sign", str(unsigned), "--key", str(release_key)], env=ENV
    )
    assert signed.exit_code == 0, signed.output
    envelope = Envelope.from_bytes(unsigned.with_suffix(".signed.json").read_bytes())
    answer = upload(client, operator, envelope)

    assert answer.status_code == 201, answer.text
    stored = Envelope.from_json_obj(
        client.get("/api/v1/models/digits/versions/1/release", headers=bearer(operator)).json()[
            "envelope"
        ]
    )
    trust_root = client.app.state.ctx.signer.trust_root  # type: ignore[attr-defined]
    assert verify_document(stored, Release, trust_root).artifact.sha256 == answer.json()["sha256"]


def test_a_release_signed_with_the_deployment_key_is_refused(
    offline: tuple[TestClient, str, Path], digits: tuple[Path, Path]
) -> None:
    client, operator, _key = offline
    release = Release.from_json_obj(prepared(client, operator, digits))
    forged = release.sign([client.app.state.ctx.signer.deployment_key])  # type: ignore[attr-defined]

    answer = upload(client, operator, forged)

    assert answer.status_code == 409
    assert "does not verify" in answer.json()["detail"]
    listed = client.get("/api/v1/releases", headers=bearer(operator)).json()
    assert listed == []


def test_a_signed_release_of_another_artifact_is_refused(
    offline: tuple[TestClient, str, Path], digits: tuple[Path, Path], tmp_path: Path
) -> None:
    client, operator, release_key = offline
    document = prepared(client, operator, digits)
    document["artifact"]["sha256"] = "0" * 64
    release = Release.from_json_obj(document)
    key = SigningKey.from_encrypted_pem(release_key.read_bytes(), TEST_PASSPHRASE.encode())
    answer = upload(client, operator, release.sign([key]))
    assert answer.status_code == 409
    assert "not of digits:1" in answer.json()["detail"]
