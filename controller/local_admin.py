"""Administration on the controller host, straight against the database.

Tokens are created here rather than over HTTP so that the first admin token needs no
token; whoever can run this can read the data directory anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

from sqlmodel import Session

from .audit import AuditAnchor, AuditProblem, append_audit, audit_head, verify_audit_chain
from .db import make_engine, session_scope
from .migrate import upgrade_database
from .settings import Settings
from .tables import ApiToken
from .tokens import Principal, Role, create_token, list_tokens, revoke_token

__all__ = [
    "audit_head_locally",
    "create_token_locally",
    "list_tokens_locally",
    "revoke_token_locally",
    "verify_audit_locally",
]

T = TypeVar("T")

LOCAL_ADMIN = Principal(token_id="local", name="controller host", role=Role.ADMIN)  # noqa: S106


@contextmanager
def _database(settings: Settings) -> Iterator[Session]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade_database(engine)
        with session_scope(engine) as session:
            yield session
    finally:
        engine.dispose()


def _run(settings: Settings, work: Callable[[Session], T]) -> T:
    with _database(settings) as session:
        return work(session)


def create_token_locally(
    settings: Settings, *, name: str, role: Role, lifetime: timedelta | None = None
) -> str:
    def create(session: Session) -> str:
        token = create_token(session, name=name, role=role, lifetime=lifetime)
        details: dict[str, object] = {"name": name, "role": role.value}
        if lifetime is not None:
            details["lifetime_s"] = lifetime.total_seconds()
        append_audit(
            session,
            LOCAL_ADMIN,
            action="tokens create",
            target=f"token {token.split('_')[1]}",
            details=details,
        )
        return token

    return _run(settings, create)


def list_tokens_locally(settings: Settings, *, include_ended: bool) -> list[ApiToken]:
    def read(session: Session) -> list[ApiToken]:
        rows = list_tokens(session, include_ended=include_ended)
        for row in rows:
            session.expunge(row)  # readable after the session closes
        return rows

    return _run(settings, read)


def revoke_token_locally(settings: Settings, token_id: str) -> ApiToken:
    def revoke(session: Session) -> ApiToken:
        row = revoke_token(session, token_id)
        append_audit(
            session,
            LOCAL_ADMIN,
            action="tokens revoke",
            target=f"token {token_id}",
            details={"name": row.name, "role": row.role},
        )
        session.flush()
        session.expunge(row)
        return row

    return _run(settings, revoke)


def verify_audit_locally(
    settings: Settings, anchors: tuple[AuditAnchor, ...] = ()
) -> tuple[int, list[AuditProblem]]:
    return _run(settings, lambda session: verify_audit_chain(session, anchors))


def audit_head_locally(settings: Settings) -> AuditAnchor:
    return _run(settings, audit_head)
