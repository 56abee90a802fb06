"""API tokens: ``ef_<id>_<secret>``, stored as the SHA-256 of the secret, never in clear.

Roles are ordered ``device < viewer < operator < admin``; a role may do what every role
below it may. ``device`` is what enrolled devices hold: it may only download artifacts.

The id finds the row; the secret's hash is compared with ``hmac.compare_digest`` so the
comparison takes the same time whatever the guess. Secrets have 256 bits of entropy, so
a fast hash is enough (no password stretching needed).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

from sqlmodel import Session

from .tables import ApiToken

__all__ = ["Principal", "Role", "authenticate", "create_token"]

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


def create_token(session: Session, *, name: str, role: Role) -> str:
    """Store a new token and return it; this is the only time it is ever in clear."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    session.add(ApiToken(id=token_id, name=name, role=role.value, secret_sha256=_hash(secret)))
    return f"{TOKEN_PREFIX}_{token_id}_{secret}"


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal for ``token``, or None when it is unknown, malformed or revoked."""
    prefix, _, rest = token.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or not token_id or not secret:
        return None
    row = session.get(ApiToken, token_id)
    # Compare even when the row is missing, so timing does not reveal which ids exist.
    expected = row.secret_sha256 if row is not None else _hash("")
    matches = hmac.compare_digest(expected, _hash(secret))
    if row is None or not matches or row.revoked_at is not None:
        return None
    return Principal(token_id=row.id, name=row.name, role=Role(row.role))
