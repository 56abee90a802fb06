"""Dashboard sessions: a signed cookie naming an API token, and CSRF tokens bound to it.

The cookie holds ``<token id>.<expiry, unix s>.<HMAC>``, never the token's secret. Keeping
the raw token in an HttpOnly cookie would also work, but then every copy of the cookie
(a proxy log, a backup of a browser profile) would be a bearer token for the whole API
that lives until it is revoked; this cookie opens only the dashboard, and only until it
expires.

Invariants:
- the HMAC key is derived from the deployment signing key, which every controller replica
  already holds: a session made by one replica is valid on the others and across
  restarts, and nobody without that key can make one;
- the HMAC covers the token's stored secret hash, so a session ends when its token is
  revoked or replaced, and reading the database alone is not enough to forge one;
- every comparison of a secret value uses ``hmac.compare_digest``, and an unknown token
  id costs the same work as a known one;
- a cookie is parsed by one ASCII-only pattern before anything else looks at it: whatever
  a client sends (``²`` as a digit, a non-ASCII signature, an expiry past any clock) is
  no session, never an error;
- device tokens never get a session: the dashboard is for people.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlmodel import Session

from protocol import SigningKey

from ..tables import ApiToken
from ..tokens import Principal, Role

__all__ = [
    "LOGIN_COOKIE",
    "LOGIN_NONCE_TTL_S",
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "SessionSigner",
    "new_login_nonce",
    "principal_for_session",
]

SESSION_COOKIE = "edgefleet_session"
# A nonce cookie that the login form must echo (double submit), against login CSRF: a
# foreign page cannot log a browser in with the foreign page's own token.
LOGIN_COOKIE = "edgefleet_login"
SESSION_TTL_S = 12 * 3600
LOGIN_NONCE_TTL_S = 3600
MAX_COOKIE_CHARS = 256
# ``<token id>.<expiry>.<hex HMAC-SHA256>``, ASCII only: ``str.isdigit`` would take ``²``,
# which ``int`` refuses, and ``hmac.compare_digest`` refuses non-ASCII strings. Token ids
# are short hex (``tokens.create_token``); the column holds at most 32 characters.
_COOKIE_PATTERN = re.compile(r"([0-9A-Za-z_-]{1,32})\.([0-9]{1,12})\.([0-9a-f]{64})", re.ASCII)
# A fixed, domain-separated message: deployment signatures are over DSSE's PAE encoding
# ("DSSEv1 …"), so no signature the controller publishes can ever equal this one.
_KEY_LABEL = b"edgefleet dashboard session key v1"


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class SessionSigner:
    """Makes and checks session cookies and the CSRF tokens bound to them."""

    key: bytes = field(repr=False)

    @classmethod
    def from_deployment_key(cls, deployment_key: SigningKey) -> SessionSigner:
        # Ed25519 signatures are deterministic (RFC 8032): every replica holding the
        # deployment key derives the same secret, and it cannot be derived without it.
        return cls(hashlib.sha256(deployment_key.sign(_KEY_LABEL)).digest())

    def _mac(self, token_id: str, expires_s: int, secret_sha256: str) -> str:
        message = f"session|{token_id}|{expires_s}|{secret_sha256}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def make(self, token: ApiToken, *, now_s: float) -> str:
        """A session cookie value for ``token``, valid for ``SESSION_TTL_S``."""
        expires_s = int(now_s) + SESSION_TTL_S
        return f"{token.id}.{expires_s}.{self._mac(token.id, expires_s, token.secret_sha256)}"

    def verify(self, value: str, token: ApiToken | None, *, now_s: float) -> bool:
        """True when ``value`` is an unexpired session this signer made for ``token``."""
        parsed = parse_session(value)
        if parsed is None:
            return False
        token_id, expires_s, mac = parsed
        # Compare even without a row, so timing does not tell which token ids exist.
        secret_sha256 = token.secret_sha256 if token is not None else ""
        matches = hmac.compare_digest(mac, self._mac(token_id, expires_s, secret_sha256))
        return matches and token is not None and token.id == token_id and now_s < expires_s

    def csrf_token(self, session_value: str) -> str:
        """The token forms of this session carry; it changes with every new session."""
        message = f"csrf|{session_value}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:32]

    def verify_csrf(self, session_value: str, submitted: str) -> bool:
        return bool(session_value) and hmac.compare_digest(
            self.csrf_token(session_value).encode(), submitted.encode()
        )


def parse_session(value: str) -> tuple[str, int, str] | None:
    """``(token id, expiry, mac)`` of a well-formed cookie value, else None."""
    if len(value) > MAX_COOKIE_CHARS:
        return None
    match = _COOKIE_PATTERN.fullmatch(value)
    if match is None:
        return None
    token_id, expires, mac = match.groups()
    return token_id, int(expires), mac


def principal_for_session(
    session: Session, signer: SessionSigner, value: str, *, now_s: float
) -> Principal | None:
    """Who holds this session cookie, or None when it is forged, expired or revoked."""
    parsed = parse_session(value)
    if parsed is None:
        return None
    row = session.get(ApiToken, parsed[0])
    if not signer.verify(value, row, now_s=now_s) or row is None:
        return None
    if not row.is_live(datetime.fromtimestamp(now_s, UTC)):  # revoked, or past its expiry
        return None
    role = Role(row.role)
    if not role.may(Role.VIEWER):
        return None
    return Principal(token_id=row.id, name=row.name, role=role)
