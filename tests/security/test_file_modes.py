"""The data directory is private (0700) and so is the SQLite database (0600).

Found in the security review: the database file was world-readable (0644), and so was
the data directory holding it, the keys and every uploaded validation set. Any local
user could read token hashes, device credentials and the audit log.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from controller.app import create_app
from controller.db import session_scope
from controller.settings import Settings, load_settings
from controller.tokens import Role, create_token
from tests.controller import conftest as controller_fixtures

app, settings, ctx = controller_fixtures.app, controller_fixtures.settings, controller_fixtures.ctx
DATABASE_FILES = ("edgefleet.db", "edgefleet.db-wal", "edgefleet.db-shm")


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    # What most systems start services with; the modes must not depend on it.
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def database_url() -> str:
    return ""  # the default: DATA_DIR/edgefleet.db


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_something(app: FastAPI) -> None:
    with session_scope(ctx(app).engine) as session:
        create_token(session, name="someone", role=Role.ADMIN)


def test_a_fresh_data_directory_and_its_database_are_private(
    app: FastAPI, settings: Settings
) -> None:
    write_something(app)

    assert mode(settings.data_dir) == 0o700
    for name in DATABASE_FILES:  # the -wal and -shm files exist while the engine is open
        assert mode(settings.data_dir / name) == 0o600, name


def test_an_existing_data_directory_open_to_others_is_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    (data_dir / "edgefleet.db").touch(mode=0o644)
    (data_dir / "edgefleet.db-wal").touch(mode=0o644)
    old_install = load_settings(environ={}, overrides={"data_dir": data_dir})

    with caplog.at_level(logging.WARNING):
        app = create_app(old_install, environ={"EDGEFLEET_KEY_PASSPHRASE": "test passphrase"})
    try:
        write_something(app)
        assert mode(data_dir) == 0o700
        assert mode(data_dir / "edgefleet.db") == 0o600
        assert mode(data_dir / "edgefleet.db-wal") == 0o600
    finally:
        ctx(app).engine.dispose()
    assert "open to other users" in caplog.text


def test_the_key_directory_is_private(app: FastAPI, settings: Settings) -> None:
    assert mode(settings.keys_dir) == 0o700
