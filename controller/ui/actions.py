"""Logging in and out, and the rollout buttons (pause, resume, abort).

The login form trades an API token (checked by ``tokens.authenticate``, in constant time)
for a session cookie: HttpOnly, SameSite=Strict, path ``/ui``, Secure over HTTPS. Rollout
buttons are POST forms with a CSRF token; they queue the command with the API's
``queue_command`` and are audited as the API's commands are, then redirect back to the
rollout page (POST/redirect/GET).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Path, Query, Request, Response, status
from fastapi.responses import HTMLResponse, RedirectResponse

from ..api.deps import DbSession
from ..errors import ConflictError, NotFoundError
from ..pipelines.runs import approve_pipeline
from ..rollouts.core import CommandKind
from ..rollouts.records import queue_command
from ..tables import ApiToken
from ..tokens import Role, authenticate
from .auth import (
    DashboardHTTPError,
    OperatorUser,
    ReadSession,
    UiAudited,
    VerifiedCsrf,
    dashboard_state,
)
from .rendering import render
from .sessions import (
    LOGIN_COOKIE,
    LOGIN_NONCE_TTL_S,
    SESSION_COOKIE,
    SESSION_TTL_S,
    new_login_nonce,
)
from .views import DashboardCommand

__all__ = ["login_page", "router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/ui", include_in_schema=False)

COOKIE_PATH = "/ui"
MAX_TOKEN_CHARS = 512
HOME = "/ui"


def safe_next(target: str) -> str:
    """Where to go after logging in: a dashboard path on this site, never elsewhere."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/ui") or "\\" in target:
        return HOME
    return target


def login_page(
    request: Request, *, next_url: str = HOME, error: str = "", status_code: int = 200
) -> HTMLResponse:
    """The login form, with a fresh nonce in the form and in a cookie (double submit)."""
    nonce = new_login_nonce()
    response = render(
        request,
        "login.html",
        {"next_url": safe_next(next_url), "error": error, "nonce": nonce, "user": None},
        status_code=status_code,
    )
    if status_code == status.HTTP_401_UNAUTHORIZED:
        response.headers["WWW-Authenticate"] = "Bearer"
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=LOGIN_NONCE_TTL_S,
        path=f"{COOKIE_PATH}/login",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.get("/login")
def get_login(
    request: Request, next_url: Annotated[str, Query(alias="next", max_length=2048)] = HOME
) -> HTMLResponse:
    """The login form (open: it is how a session starts)."""
    return login_page(request, next_url=next_url)


@router.post("/login")
def post_login(
    request: Request,
    session: ReadSession,
    token: Annotated[str, Form(max_length=MAX_TOKEN_CHARS)] = "",
    nonce: Annotated[str, Form(max_length=64)] = "",
    next_url: Annotated[str, Form(alias="next", max_length=2048)] = HOME,
) -> Response:
    """Check the token; on success set the session cookie and go where the user was going."""
    cookie_nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not _same(nonce, cookie_nonce):
        return login_page(
            request,
            next_url=next_url,
            error="The login form expired. Please paste your token again.",
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    principal = authenticate(session, token.strip())
    if principal is None:
        logger.info("dashboard login refused: unknown, malformed or revoked token")
        return login_page(
            request,
            next_url=next_url,
            error="That token is not valid (unknown, mistyped or revoked).",
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    if not principal.role.may(Role.VIEWER):
        return login_page(
            request,
            next_url=next_url,
            error="Device tokens cannot open the dashboard: use a viewer, operator or admin token.",
            status_code=status.HTTP_403_FORBIDDEN,
        )
    row = session.get(ApiToken, principal.token_id)
    assert row is not None  # authenticate just read it
    value = dashboard_state(request).signer.make(row, now_s=time.time())
    logger.info("dashboard login: %s (%s)", principal.name, principal.role.value)
    response = RedirectResponse(safe_next(next_url), status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_TTL_S,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(LOGIN_COOKIE, path=f"{COOKIE_PATH}/login")
    return response


@router.get("/logout")
def logout() -> Response:
    """Forget the session cookie (open: it only ever removes this browser's session)."""
    response = RedirectResponse(f"{COOKIE_PATH}/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


@router.post("/rollouts/{rollout_id}/{kind}", dependencies=[UiAudited, VerifiedCsrf])
def post_rollout_command(
    rollout_id: Annotated[str, Path(max_length=128)],
    kind: DashboardCommand,
    request: Request,
    session: DbSession,
    user: OperatorUser,
) -> Response:
    """Queue pause, resume or abort, as ``POST /api/v1/rollouts/{id}/{kind}`` does."""
    try:
        queue_command(
            session, rollout_id=rollout_id, kind=CommandKind(kind.value), actor=user.principal.name
        )
    except NotFoundError as exc:
        raise DashboardHTTPError(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ConflictError as exc:
        raise DashboardHTTPError(status.HTTP_409_CONFLICT, str(exc)) from exc
    request.state.audit = {"target": rollout_id, "command": kind.value}
    return RedirectResponse(
        f"{COOKIE_PATH}/rollouts/{rollout_id}?queued={kind.value}",
        status_code=status.HTTP_303_SEE_OTHER,
    )


@router.post("/pipelines/{pipeline_id}/approve", dependencies=[UiAudited, VerifiedCsrf])
def post_approve_pipeline(
    pipeline_id: Annotated[str, Path(max_length=32)],
    request: Request,
    session: DbSession,
    user: OperatorUser,
) -> Response:
    """Approve a pipeline's release, as ``POST /api/v1/pipelines/{id}/approve`` does."""
    try:
        pipeline = approve_pipeline(session, pipeline_id, actor=user.principal.name)
    except NotFoundError as exc:
        raise DashboardHTTPError(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ConflictError as exc:
        raise DashboardHTTPError(status.HTTP_409_CONFLICT, str(exc)) from exc
    request.state.audit = {"target": pipeline.id, "channel": pipeline.channel}
    return RedirectResponse(
        f"{COOKIE_PATH}/channels/{pipeline.channel}?approved={pipeline.id}",
        status_code=status.HTTP_303_SEE_OTHER,
    )


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
