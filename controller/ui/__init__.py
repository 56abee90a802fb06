"""The web dashboard at ``/ui``: server-rendered pages over the API's own data functions.

``install_dashboard(app)`` adds the pages, the login and rollout forms, the static files
and the error pages to an app built by ``create_app``. Modules: ``sessions`` (signed
session cookies, CSRF tokens), ``auth`` (who is asking, what they may do), ``views``
(figures for the pages), ``pages`` (GET), ``actions`` (login, logout, rollout buttons),
``rendering`` (templates and security headers). Templates are in ``templates/``; a CSS
file and a small script for live refresh are in ``static/``; there is no build step.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response, status
from fastapi.staticfiles import StaticFiles

from ..context import ControllerContext
from . import actions, pages
from .auth import DashboardHTTPError, DashboardState
from .rendering import STATIC_DIR, make_templates, render
from .sessions import SessionSigner

__all__ = ["install_dashboard"]


def install_dashboard(app: FastAPI) -> None:
    ctx: ControllerContext = app.state.ctx
    app.state.dashboard = DashboardState(
        signer=SessionSigner.from_deployment_key(ctx.signer.deployment_key),
        templates=make_templates(),
    )
    app.include_router(actions.router)
    app.include_router(pages.router)
    # Stylesheet and script only, the same for everybody: open, so the login page has them.
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.add_exception_handler(DashboardHTTPError, _error_page)


async def _error_page(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DashboardHTTPError)
    if exc.status_code == status.HTTP_401_UNAUTHORIZED:
        path = request.url.path
        query = f"?{request.url.query}" if request.url.query else ""
        # A page asked for without a session answers with the login form, and comes back.
        came_for = f"{path}{query}" if request.method == "GET" else "/ui"
        if came_for.endswith("/live"):  # a fragment: come back to its page instead
            came_for = came_for.removesuffix("/live")
        return actions.login_page(request, next_url=came_for, status_code=exc.status_code)
    context = {"status": exc.status_code, "message": exc.detail, "user": None}
    return render(request, "error.html", context, status_code=exc.status_code)
