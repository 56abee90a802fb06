"""The audit log is a hash chain: an edited or deleted row is found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastapi import FastAPI
from sqlalchemy import text

from controller.audit import append_audit, verify_audit_chain
from controller.db import session_scope
from controller.settings import Settings
from controller.tokens import Principal, Role
from tests.controller.conftest import ctx

ALICE = Principal(token_id="t1", name="alice", role=Role.OPERATOR)


def append_three(app: FastAPI) -> None:
    with session_scope(ctx(app).engine) as session:
        for n in range(3):
            append_audit(session, ALICE, action="POST /x", target=f"x{n}", details={"n": n})


def problems(app: FastAPI) -> list[str]:
    with session_scope(ctx(app).engine) as session:
        _count, found = verify_audit_chain(session)
    return [p.problem for p in found]


def test_intact_chain_verifies(app: FastAPI) -> None:
    append_three(app)
    with session_scope(ctx(app).engine) as session:
        count, found = verify_audit_chain(session)
    assert (count, found) == (3, [])


def test_edited_row_is_detected(app: FastAPI) -> None:
    append_three(app)
    with ctx(app).engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET target = 'forged' WHERE seq = 2"))
    assert problems(app) == ["entry was edited (hash mismatch)"]


def test_deleted_middle_row_is_detected(app: FastAPI) -> None:
    append_three(app)
    with ctx(app).engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_log WHERE seq = 2"))
    assert "expected entry 2: rows deleted" in problems(app)


def test_deleted_last_row_is_detected(app: FastAPI) -> None:
    append_three(app)
    with ctx(app).engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_log WHERE seq = 3"))
    assert problems(app) == ["head says entry 3, log ends at 2: rows deleted"]


def edgefleet(*args: str, data_dir: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {"EDGEFLEET_DATA_DIR": str(data_dir), "EDGEFLEET_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "controller", *args],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_tokens_create_prints_only_the_token_and_audit_verify_catches_an_edit(
    app: FastAPI, settings: Settings
) -> None:
    url = settings.resolved_database_url
    created = edgefleet(
        "tokens", "create", "--role", "viewer", data_dir=settings.data_dir, database_url=url
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("ef_")
    assert created.stdout.count("\n") == 1

    intact = edgefleet("audit", "verify", data_dir=settings.data_dir, database_url=url)
    assert intact.returncode == 0, intact.stderr
    assert "audit log intact: 1 entries" in intact.stdout

    with ctx(app).engine.begin() as connection:
        connection.execute(text("UPDATE audit_log SET target = 'token forged'"))
    broken = edgefleet("audit", "verify", data_dir=settings.data_dir, database_url=url)
    assert broken.returncode == 1
    assert "entry 1: entry was edited" in broken.stdout
