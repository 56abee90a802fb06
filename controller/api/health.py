"""Probes and metrics. Only ``/healthz`` and ``/readyz`` are open: they reveal nothing."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .deps import Context, Viewer

router = APIRouter(tags=["health"])
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class Health(BaseModel):
    status: Literal["ok", "ready", "unavailable"]
    reason: str | None = Field(default=None, description="why not ready; absent when ready")


@router.get("/healthz", response_model_exclude_none=True)
def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model_exclude_none=True)
def readyz(ctx: Context, response: Response) -> Health:
    """The database answers, the signing keys are loaded, and the fleet loops have not
    stopped for good (they do when the MQTT broker refuses the controller's credentials)."""
    not_ready_reason = ctx.fleet_status.not_ready_reason
    if not_ready_reason is not None:
        response.status_code = 503
        return Health(status="unavailable", reason=not_ready_reason)
    try:
        with ctx.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        response.status_code = 503
        return Health(status="unavailable", reason=f"database: {type(exc).__name__}")
    return Health(status="ready")


@router.get("/metrics", response_class=Response)
def metrics(ctx: Context, _caller: Viewer) -> Response:
    """Prometheus metrics (needs a viewer token; scrapers send it as a bearer token)."""
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
