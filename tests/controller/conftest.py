"""A controller app per test, on SQLite and on PostgreSQL, with a token per role."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.app import create_app
from controller.context import ControllerContext
from controller.db import session_scope
from controller.settings import Settings, load_settings
from controller.tokens import Role, create_token

TEST_PASSPHRASE = "test passphrase"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return load_settings(
        environ={},
        overrides={"data_dir": tmp_path / "data", "database_url": database_url},
    )


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(settings, environ={"EDGEFLEET_KEY_PASSPHRASE": TEST_PASSPHRASE})
    yield app
    ctx(app).engine.dispose()


def ctx(app: FastAPI) -> ControllerContext:
    context: ControllerContext = app.state.ctx
    return context


@pytest.fixture
def tokens(app: FastAPI) -> dict[Role, str]:
    with session_scope(ctx(app).engine) as session:
        return {role: create_token(session, name=f"test-{role.value}", role=role) for role in Role}


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
