"""A rewritten audit chain fails the anchor exported before the rewrite.

Found in the security review: whoever can write the database can recompute the whole
hash chain, and ``audit verify`` then said "intact". Now it says the chain is not
anchored, and with an anchor that ``audit head`` printed earlier it catches the rewrite.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from sqlmodel import col, select
from typer.testing import CliRunner

from controller.audit import GENESIS_SHA256, hash_of_entry
from controller.cli.main import app as controller_cli
from controller.db import session_scope
from controller.local_admin import create_token_locally
from controller.tables import AuditEntry, AuditHead
from controller.tokens import Role
from tests.controller import conftest as controller_fixtures

app, settings, ctx = controller_fixtures.app, controller_fixtures.settings, controller_fixtures.ctx


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'controller.db'}"


def audit(app: FastAPI, *args: str) -> tuple[int, str]:
    settings = ctx(app).settings
    env = {"EDGEFLEET_DATABASE_URL": str(settings.database_url)}
    done = CliRunner().invoke(
        controller_cli, ["audit", *args, "--data-dir", str(settings.data_dir)], env=env
    )
    return done.exit_code, done.output


def rewrite_chain(app: FastAPI) -> None:
    """What someone with write access to the database can do: edit, then rehash all."""
    with session_scope(ctx(app).engine) as session:
        prev = GENESIS_SHA256
        for entry in session.exec(select(AuditEntry).order_by(col(AuditEntry.seq))):
            if entry.seq == 1:
                entry.details = {**entry.details, "role": "viewer"}  # hide an admin token
            entry.prev_sha256 = prev
            entry.sha256 = hash_of_entry(entry)
            prev = entry.sha256
            session.add(entry)
        head = session.get(AuditHead, 1)
        assert head is not None
        head.sha256 = prev
        session.add(head)


def test_a_rewritten_chain_passes_alone_but_fails_its_exported_anchor(app: FastAPI) -> None:
    settings = ctx(app).settings
    create_token_locally(settings, name="root-ish", role=Role.ADMIN)
    create_token_locally(settings, name="ci", role=Role.VIEWER)
    code, anchor = audit(app, "head")
    assert code == 0
    anchor = anchor.strip()
    assert anchor.startswith("2:")

    rewrite_chain(app)

    code, alone = audit(app, "verify")
    assert code == 0
    assert "not anchored" in alone  # says what it cannot know
    code, anchored = audit(app, "verify", "--anchor", anchor)
    assert code == 1
    assert "does not match the anchor" in anchored


def test_an_untouched_chain_holds_its_anchor(app: FastAPI) -> None:
    create_token_locally(ctx(app).settings, name="ci", role=Role.VIEWER)
    _code, anchor = audit(app, "head")
    create_token_locally(ctx(app).settings, name="later", role=Role.VIEWER)
    code, output = audit(app, "verify", "--anchor", anchor.strip())
    assert code == 0, output
    assert "anchored at entry 1" in output
