"""Human tokens can be listed, revoked and made to expire.

Found in the security review: viewer, operator and admin tokens could not be listed,
revoked or expired; a leaked token worked forever.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from controller.cli.main import app as controller_cli
from controller.db import session_scope
from controller.local_admin import create_token_locally, list_tokens_locally
from controller.tables import ApiToken
from controller.tokens import Role, create_token
from tests.controller import conftest as controller_fixtures
from tests.controller.conftest import bearer
from tests.controller.ui.conftest import log_in

app, settings, ctx = controller_fixtures.app, controller_fixtures.settings, controller_fixtures.ctx
client = controller_fixtures.client


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'controller.db'}"


def cli(app: FastAPI, *args: str) -> str:
    """``edgefleet tokens ...`` on the controller host, against the app's database."""
    settings = ctx(app).settings
    env = {"EDGEFLEET_DATABASE_URL": str(settings.database_url)}
    done = CliRunner().invoke(
        controller_cli, ["tokens", *args, "--data-dir", str(settings.data_dir)], env=env
    )
    assert done.exit_code == 0, done.output
    return done.output


def test_a_leaked_operator_token_stops_working_once_revoked(
    app: FastAPI, client: TestClient
) -> None:
    with session_scope(ctx(app).engine) as session:
        token = create_token(session, name="laptop", role=Role.OPERATOR)
    token_id = token.split("_")[1]
    assert client.get("/api/v1/models", headers=bearer(token)).status_code == 200
    assert token_id in cli(app, "list")

    assert f"revoked token {token_id}" in cli(app, "revoke", token_id)

    assert client.get("/api/v1/models", headers=bearer(token)).status_code == 401
    assert token_id not in cli(app, "list")
    assert token_id in cli(app, "list", "--all")


def test_a_token_past_its_expiry_is_refused(app: FastAPI, client: TestClient) -> None:
    settings = ctx(app).settings
    lasting = create_token_locally(
        settings, name="ci", role=Role.VIEWER, lifetime=timedelta(days=1)
    )
    ended = create_token_locally(settings, name="old", role=Role.VIEWER, lifetime=timedelta(0))

    assert client.get("/api/v1/models", headers=bearer(lasting)).status_code == 200
    assert client.get("/api/v1/models", headers=bearer(ended)).status_code == 401
    live = {row.name for row in list_tokens_locally(settings, include_ended=False)}
    assert "ci" in live
    assert "old" not in live


def test_tokens_create_takes_an_expiry(app: FastAPI, client: TestClient) -> None:
    token = cli(app, "create", "--role", "viewer", "--name", "bot", "--expires", "2h").strip()
    assert client.get("/api/v1/models", headers=bearer(token)).status_code == 200
    (row,) = [
        r for r in list_tokens_locally(ctx(app).settings, include_ended=False) if r.name == "bot"
    ]
    assert row.expires_at is not None


def test_a_dashboard_session_ends_with_its_tokens_expiry(app: FastAPI, client: TestClient) -> None:
    token = create_token_locally(
        ctx(app).settings, name="alice", role=Role.VIEWER, lifetime=timedelta(hours=1)
    )
    log_in(client, token)
    assert client.get("/ui/devices").status_code == 200
    with session_scope(ctx(app).engine) as session:
        row = session.get(ApiToken, token.split("_")[1])
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
    assert client.get("/ui/devices", follow_redirects=False).status_code in (302, 303, 401)
