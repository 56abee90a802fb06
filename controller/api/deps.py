"""Typed dependencies: the request's context, DB session, caller and audit record.

Routes never commit: the session dependency commits after the route returns (before
the response is sent) and rolls back when it raises. Every mutating route carries
``audited``, which appends to the audit log in the same transaction, so a change and
its audit entry are committed together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from ..audit import append_audit
from ..context import ControllerContext
from ..db import session_scope
from ..tokens import Principal, Role, authenticate

__all__ = [
    "Admin",
    "Context",
    "DbSession",
    "Device",
    "Operator",
    "Viewer",
    "audited",
    "get_context",
    "get_session",
    "require_role",
]

_bearer = HTTPBearer(auto_error=False, description="An edgefleet API token.")


def get_context(request: Request) -> ControllerContext:
    ctx: ControllerContext = request.app.state.ctx
    return ctx


Context = Annotated[ControllerContext, Depends(get_context)]


# Methods whose handlers only read. On SQLite their transactions begin deferred, so they
# never wait for the write lock: a burst of reads (fifty devices downloading an artifact
# at once) must not fill the thread pool with requests queued on the lock while the
# request that holds it waits for a thread to finish in.
READ_ONLY_METHODS = frozenset({"GET", "HEAD"})


def get_session(request: Request, ctx: Context) -> Iterator[Session]:
    engine = ctx.read_engine if request.method in READ_ONLY_METHODS else ctx.engine
    with session_scope(engine) as session:
        yield session


DbSession = Annotated[Session, Depends(get_session, scope="function")]


def get_principal(
    session: DbSession,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = authenticate(session, credentials.credentials) if credentials else None
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def require_role(role: Role) -> Callable[..., Principal]:
    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.role.may(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"this needs the {role.value} role; the token has {principal.role.value}",
            )
        return principal

    return check


def require_device(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """A device's own token, and no other: the route acts on the calling device."""
    if principal.role != Role.DEVICE:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"this needs a device's token; the token has role {principal.role.value}",
        )
    return principal


# Device tokens may only download artifacts (and renew their certificate, ThisDevice);
# every other route needs Viewer or more.
Device = Annotated[Principal, Depends(require_role(Role.DEVICE))]
ThisDevice = Annotated[Principal, Depends(require_device)]
Viewer = Annotated[Principal, Depends(require_role(Role.VIEWER))]
Operator = Annotated[Principal, Depends(require_role(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]


def audited(
    request: Request, session: DbSession, principal: Annotated[Principal, Depends(get_principal)]
) -> Iterator[None]:
    """Record the mutating call after the route succeeded, in its transaction.

    A route adds detail by setting ``request.state.audit`` to a dict; ``target`` in it
    names what changed (else the path).
    """
    yield
    details: dict[str, Any] = dict(getattr(request.state, "audit", {}))
    route = request.scope.get("route")
    action = f"{request.method} {getattr(route, 'path', request.url.path)}"
    target = str(details.pop("target", request.url.path))
    append_audit(session, principal, action=action, target=target, details=details)


Audited = Depends(audited, scope="function")
