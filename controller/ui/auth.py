"""Who is looking at the dashboard, what they may do, and the checks on their forms.

A dashboard request is authenticated by the session cookie, or by an ``Authorization:
Bearer`` header as the API is (scripts, and the route-walking tests). Roles are the API's:
viewers read, operators also steer rollouts. Mutating forms carry a CSRF token bound to
the session; a request authenticated by a bearer header needs none, since browsers never
attach one on their own. The checks run in this order, so a viewer always gets 403:
authentication (401), role (403), CSRF token (403).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from ..api.deps import Context, DbSession, audited
from ..db import session_scope
from ..tokens import Principal, Role, authenticate
from .sessions import SESSION_COOKIE, SessionSigner, principal_for_session

__all__ = [
    "CurrentUser",
    "DashboardHTTPError",
    "DashboardState",
    "DashboardUser",
    "OperatorUser",
    "ReadSession",
    "UiAudited",
    "VerifiedCsrf",
    "dashboard_state",
    "ui_audited",
]

_bearer = HTTPBearer(auto_error=False, description="An edgefleet API token.")


@dataclass(frozen=True)
class DashboardState:
    """What ``install_dashboard`` builds once per app."""

    signer: SessionSigner
    templates: Jinja2Templates


class DashboardHTTPError(HTTPException):
    """An error the dashboard answers with a page; 401 answers with the login form."""


def dashboard_state(request: Request) -> DashboardState:
    state: DashboardState = request.app.state.dashboard
    return state


def get_read_session(ctx: Context) -> Iterator[Session]:
    # Deferred transactions on SQLite: however many browsers refresh a rollout page, and
    # even a login posted, they never wait for or hold up the writers (ingest, the loop).
    with session_scope(ctx.read_engine) as session:
        yield session


ReadSession = Annotated[Session, Depends(get_read_session, scope="function")]


@dataclass(frozen=True)
class DashboardUser:
    principal: Principal
    # None when the request came with a bearer header instead of the session cookie.
    csrf_token: str | None

    @property
    def may_operate(self) -> bool:
        return self.principal.role.may(Role.OPERATOR)


def current_user(
    request: Request,
    session: ReadSession,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> DashboardUser:
    state = dashboard_state(request)
    if credentials is not None:
        principal = authenticate(session, credentials.credentials)
        csrf_token = None
    else:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        principal = principal_for_session(session, state.signer, cookie, now_s=time.time())
        csrf_token = state.signer.csrf_token(cookie)
    if principal is None:
        raise DashboardHTTPError(status.HTTP_401_UNAUTHORIZED, "please log in")
    if not principal.role.may(Role.VIEWER):
        raise DashboardHTTPError(
            status.HTTP_403_FORBIDDEN, "device tokens cannot open the dashboard"
        )
    return DashboardUser(principal=principal, csrf_token=csrf_token)


CurrentUser = Annotated[DashboardUser, Depends(current_user)]


def require_operator(user: CurrentUser) -> DashboardUser:
    if not user.may_operate:
        raise DashboardHTTPError(
            status.HTTP_403_FORBIDDEN,
            f"this needs the operator role; you are logged in as {user.principal.role.value}",
        )
    return user


OperatorUser = Annotated[DashboardUser, Depends(require_operator)]


async def verify_csrf(request: Request, user: OperatorUser) -> None:
    if user.csrf_token is None:
        return  # a bearer header: no browser sends one by itself
    form = await request.form()
    submitted = form.get("csrf")
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if not isinstance(submitted, str) or not dashboard_state(request).signer.verify_csrf(
        cookie, submitted
    ):
        raise DashboardHTTPError(
            status.HTTP_403_FORBIDDEN,
            "the form's security token is missing or stale: reload the page and try again",
        )


VerifiedCsrf = Depends(verify_csrf)


def ui_audited(request: Request, session: DbSession, user: CurrentUser) -> Iterator[None]:
    """The API's ``audited``, for a principal known by its session cookie.

    The entry is appended after the route succeeded, in the route's transaction, exactly
    as for the API; a route sets ``request.state.audit`` the same way.
    """
    yield from audited(request, session, user.principal)


UiAudited = Depends(ui_audited, scope="function")
