"""API tokens: ``ef_<id>_<secret>``, stored as the SHA-256 of the secret, never in clear.

Roles are ordered ``device < viewer < operator < admin``; a role may do what every role
below it may. ``device`` is what enrolled devices hold: it may only download artifacts.

A token may carry an expiry; ``revoke_token`` ends one at once. Either way ``authenticate``
(and the dashboard's sessions, ``ApiToken.is_live``) stop accepting it.

The id finds the row; the secret's hash is compared with ``hmac.compare_digest`` so the
comparison takes the same time whatever the guess. Secrets have 256 bits of entropy, so
a fast hash is enough (no password stretching needed).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlmodel import Session, col, select

from .errors import NotFoundError
from .tables import ApiToken

__all__ = ["Principal", "Role", "authenticate", "create_token", "list_tokens", "revoke_token"]

TOKEN_PREFIX = "ef"  # noqa: S105 - a prefix, not a secret


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    DEVICE = "device"

    def may(self, needed: Role) -> bool:
        """True when this role has at least the rights of ``needed``."""
        return _ROLE_ORDER.index(self) >= _ROLE_ORDER.index(needed)


_ROLE_ORDER = (Role.DEVICE, Role.VIEWER, Role.OPERATOR, Role.ADMIN)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's id, name and role."""

    token_id: str
    name: str
    role: Role


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_token(
    session: Session, *, name: str, role: Role, lifetime: timedelta | None = None
) -> str:
    """Store a new token (valid for ``lifetime``, or until revoked) and return it; this is
    the only time it is ever in clear."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    expires_at = None if lifetime is None else datetime.now(UTC) + lifetime
    session.add(
        ApiToken(
            id=token_id,
            name=name,
            role=role.value,
            secret_sha256=_hash(secret),
            expires_at=expires_at,
        )
    )
    return f"{TOKEN_PREFIX}_{token_id}_{secret}"


def list_tokens(session: Session, *, include_ended: bool = False) -> list[ApiToken]:
    """Tokens by creation time; without ``include_ended``, only those still live."""
    rows = session.exec(select(ApiToken).order_by(col(ApiToken.created_at), col(ApiToken.id)))
    now = datetime.now(UTC)
    return [row for row in rows if include_ended or row.is_live(now)]


def revoke_token(session: Session, token_id: str) -> ApiToken:
    """End a token now (idempotent: a revoked token keeps its first revocation time)."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"no token {token_id!r}")
    if row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        session.add(row)
    return row


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal for ``token``, or None when it is unknown, malformed, revoked or
    expired."""
    prefix, _, rest = token.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not token_id or not secret:
        return None
    row = session.get(ApiToken, token_id)
    # Compare even when the row is missing, so timing does not reveal which ids exist.
    expected = row.secret_sha256 if row is not None else _hash("")
    matches = hmac.compare_digest(expected, _hash(secret))
    if row is None or not matches or not row.is_live(datetime.now(UTC)):
        return None
    return Principal(token_id=row.id, name=row.name, role=Role(row.role))
