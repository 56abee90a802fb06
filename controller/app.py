"""The FastAPI app factory: ``create_app(settings)`` builds everything a request needs.

Startup order: data directories, database engine, migrations, signing keys, then routes.
Nothing happens at import time. Controller errors become JSON ``{"detail", "kind"}``
answers with a 4xx status; nothing a client sends can produce a 5xx by design.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from . import __version__
from .api import (
    alerts,
    artifacts,
    channels,
    devices,
    health,
    imports,
    jobs,
    lineage,
    model_health,
    models,
    releases,
    rollouts,
)
from .api import samples as samples_api
from .api.concurrency import HandlerConcurrencyLimit, HandlerSlots
from .api.deps import Viewer
from .api.limits import REFUSAL_REASONS, BodyRule, RequestLimits, token_admission
from .ca import load_authority
from .context import ControllerContext, prepare_data_dir
from .db import make_engine, reader_engine
from .devices.gauges import FleetCollector
from .errors import (
    BadRequestError,
    ConflictError,
    ControllerError,
    JobError,
    ModelRejectedError,
    NotFoundError,
    SampleDeviceMismatchError,
    SampleNotOrderedError,
    SampleQuotaError,
    UploadTooLargeError,
    UpstreamError,
)
from .metrics import Metrics
from .migrate import upgrade_database
from .registry.artifact_store import ArtifactStore
from .rollouts.core import RolloutSpecError
from .settings import Settings
from .signing import load_or_create_signer
from .tokens import Role
from .ui import install_dashboard

__all__ = ["build_context", "create_app"]

logger = logging.getLogger(__name__)

# Room for the multipart headers and boundaries around an upload's two files.
MULTIPART_SLACK_BYTES = 64 * 1024

STATUS_BY_ERROR: list[tuple[type[Exception], int]] = [
    (NotFoundError, 404),
    (ConflictError, 409),
    (ModelRejectedError, 422),
    (JobError, 422),
    (UploadTooLargeError, 413),
    (BadRequestError, 400),
    (RolloutSpecError, 400),
    (SampleDeviceMismatchError, 403),
    (SampleNotOrderedError, 403),
    (SampleQuotaError, 507),
    (UpstreamError, 502),
]


def build_context(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> ControllerContext:
    prepare_data_dir(settings)  # private (0700) before anything is written into it
    engine = make_engine(settings.resolved_database_url)
    upgrade_database(engine)
    return ControllerContext(
        settings=settings,
        engine=engine,
        store=ArtifactStore(settings.artifacts_dir),
        signer=load_or_create_signer(
            settings.keys_dir, environ, release_key_online=settings.release_key == "online"
        ),
        metrics=Metrics(),
        read_engine=reader_engine(engine),
        authority=load_authority(settings, environ),
    )


def create_app(settings: Settings, environ: Mapping[str, str] | None = None) -> FastAPI:
    ctx = build_context(settings, environ)
    ctx.metrics.registry.register(FleetCollector(ctx.read_engine, settings.artifacts_dir))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.engine.dispose()

    app = FastAPI(
        title="edgefleet controller",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind a token like every other route
    )
    app.state.ctx = ctx
    for router in (
        health.router,
        models.router,
        releases.router,
        artifacts.router,
        devices.router,
        rollouts.router,
        alerts.router,
        samples_api.router,
        model_health.router,
        imports.router,
        lineage.router,
        channels.router,
        jobs.router,
    ):
        app.include_router(router)

    @app.get("/api/v1/openapi.json", tags=["health"], include_in_schema=False)
    def openapi(_caller: Viewer) -> dict[str, Any]:
        return app.openapi()

    install_dashboard(app)
    app.add_exception_handler(ControllerError, _controller_error)
    app.add_exception_handler(RolloutSpecError, _controller_error)
    app.middleware("http")(_measure(ctx))
    for reason in REFUSAL_REASONS:  # at zero from the start, so rates and alerts work
        ctx.metrics.http_requests_refused.labels(reason)
    # Requests wait here before they take a worker thread or a connection...
    slots = HandlerSlots()
    app.add_middleware(HandlerConcurrencyLimit, slots=slots)
    # ...and, outermost, their whole body is received (within its limits) before that.
    app.add_middleware(
        RequestLimits,
        max_request_bytes=settings.max_request_bytes,
        body_timeout_s=settings.request_body_timeout_s,
        min_body_bytes_per_s=settings.min_request_body_bytes_per_s,
        spool_dir=settings.work_dir / "uploads",
        rules=[
            BodyRule(
                "POST",
                re.compile(r"/api/v1/models/[^/]+/versions"),
                settings.max_upload_bytes + settings.max_validation_bytes + MULTIPART_SLACK_BYTES,
                spool=True,
                admission=token_admission(ctx.read_engine, Role.OPERATOR, slots),
            ),
            # A device's captured sample: its own limit, and only with a token.
            BodyRule(
                "PUT",
                re.compile(samples_api.SAMPLE_UPLOAD_PATH),
                settings.max_sample_bytes,
                spool=True,
                admission=token_admission(ctx.read_engine, Role.DEVICE, slots),
            ),
        ],
        # A refused request never reaches _measure: it is counted here.
        on_refusal=lambda refusal: ctx.metrics.http_requests_refused.labels(refusal.reason).inc(),
    )
    return app


async def _controller_error(_request: Request, exc: Exception) -> Response:
    status = next((code for kind, code in STATUS_BY_ERROR if isinstance(exc, kind)), 500)
    if status == 500:
        logger.error("unhandled controller error: %s", exc)
    kind = getattr(exc, "kind", None) or type(exc).__name__
    return JSONResponse({"detail": str(exc), "kind": kind}, status_code=status)


def _measure(
    ctx: ControllerContext,
) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def middleware(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.monotonic()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        ctx.metrics.http_requests.labels(template, request.method, str(response.status_code)).inc()
        ctx.metrics.http_latency.labels(template).observe(time.monotonic() - started)
        return response

    return middleware
