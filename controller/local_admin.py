"""Administration on the controller host, straight against the database.

Tokens are created here rather than over HTTP so that the first admin token needs no
token; whoever can run this can read the data directory anyway.
"""

from __future__ import annotations

from .audit import AuditProblem, append_audit, verify_audit_chain
from .db import make_engine, session_scope
from .migrate import upgrade_database
from .settings import Settings
from .tokens import Principal, Role, create_token

__all__ = ["create_token_locally", "verify_audit_locally"]

LOCAL_ADMIN = Principal(token_id="local", name="controller host", role=Role.ADMIN)  # noqa: S106


def create_token_locally(settings: Settings, *, name: str, role: Role) -> str:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade_database(engine)
        with session_scope(engine) as session:
            token = create_token(session, name=name, role=role)
            token_id = token.split("_")[1]
            append_audit(
                session,
                LOCAL_ADMIN,
                action="tokens create",
                target=f"token {token_id}",
                details={"name": name, "role": role.value},
            )
        return token
    finally:
        engine.dispose()


def verify_audit_locally(settings: Settings) -> tuple[int, list[AuditProblem]]:
    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(engine) as session:
            return verify_audit_chain(session)
    finally:
        engine.dispose()
