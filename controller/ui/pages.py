"""The dashboard's pages: fleet overview, devices, models, rollouts, audit log.

Every page needs a viewer's session (``CurrentUser``) and reads through the same data
functions as the API, in a read-only session. A missing device, model or rollout is a
404 page, a malformed selector a 400 page.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.responses import HTMLResponse
from sqlmodel import col, select

from ..api.deps import Context
from ..api.model_health import model_health
from ..audit import list_audit
from ..devices.inventory import get_device_detail, list_devices
from ..devices.selectors import parse_selector
from ..errors import BadRequestError, NotFoundError
from ..monitoring.tables import AlertEpisode, AlertRule
from ..pipelines.runs import channel_pipelines, get_channel, list_channels
from ..registry.lineage import lineage_graph
from ..registry.models import list_models, list_versions, version_public_fields
from ..registry.releases import list_releases
from ..rollouts.records import describe_rollout, get_rollout, list_rollouts, rollout_summary
from ..samples.capture import active_captures
from .auth import CurrentUser, DashboardHTTPError, DashboardUser, ReadSession
from .charts import health_charts
from .lineage import draw_lineage
from .rendering import render
from .views import (
    DashboardCommand,
    commands_for,
    fleet_overview,
    version_origins,
    wave_progress,
)

__all__ = ["router"]

router = APIRouter(prefix="/ui", include_in_schema=False)

DEVICES_PAGE = 100
AUDIT_PAGE = 50
ALERT_EPISODES = 100
Name = Annotated[str, Path(max_length=128)]


@contextmanager
def _page_errors() -> Iterator[None]:
    """The data functions' errors, as the dashboard's pages."""
    try:
        yield
    except NotFoundError as exc:
        raise DashboardHTTPError(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except BadRequestError as exc:
        raise DashboardHTTPError(status.HTTP_400_BAD_REQUEST, str(exc)) from exc


def _page(
    request: Request, user: DashboardUser, template: str, section: str, **context: Any
) -> HTMLResponse:
    return render(request, template, {"user": user, "section": section, **context})


@router.get("")
def overview_page(request: Request, session: ReadSession, user: CurrentUser) -> HTMLResponse:
    """Devices by phase, release and connection; rollouts under way and recent ones."""
    return _page(request, user, "overview.html", "overview", fleet=fleet_overview(session))


@router.get("/devices")
def devices_page(
    request: Request,
    session: ReadSession,
    user: CurrentUser,
    selector: Annotated[str, Query(max_length=1024)] = "",
    online: Literal["", "true", "false"] = "",
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> HTMLResponse:
    with _page_errors():
        views = list_devices(
            session,
            selector=parse_selector(selector),
            online=None if online == "" else online == "true",
            limit=DEVICES_PAGE + 1,  # one more, to know whether there is a next page
            offset=offset,
        )
    return _page(
        request,
        user,
        "devices.html",
        "devices",
        devices=views[:DEVICES_PAGE],
        more=len(views) > DEVICES_PAGE,
        selector=selector,
        online=online,
        offset=offset,
        page_size=DEVICES_PAGE,
    )


@router.get("/devices/{device_id}")
def device_page(
    device_id: Name, request: Request, session: ReadSession, user: CurrentUser
) -> HTMLResponse:
    with _page_errors():
        detail = get_device_detail(session, device_id=device_id)
    capture = active_captures(session, now=datetime.now(UTC), device_id=device_id)
    return _page(request, user, "device.html", "devices", detail=detail, capture=capture)


@router.get("/models")
def models_page(request: Request, session: ReadSession, user: CurrentUser) -> HTMLResponse:
    return _page(request, user, "models.html", "models", models=list_models(session))


@router.get("/models/{name}")
def model_page(
    name: Name,
    request: Request,
    session: ReadSession,
    user: CurrentUser,
    ctx: Context,
    range_name: Annotated[str, Query(alias="range", max_length=16)] = "1h",
) -> HTMLResponse:
    with _page_errors():
        versions = list_versions(session, name)
        graph = lineage_graph(session, name)
        health = health_charts(model_health(ctx, model=name, range_name=range_name))
    rows = [(row, version_public_fields(session, row)) for row in reversed(versions)]
    rollouts = [rollout_summary(session, r) for r in list_rollouts(session, model=name)]
    releases = list_releases(session, name)
    return _page(
        request,
        user,
        "model.html",
        "models",
        name=name,
        versions=rows,
        releases=releases,
        lineage=draw_lineage(graph),
        origins=version_origins(graph, versions, releases),
        rollouts=rollouts,
        health=health,
        capture=active_captures(session, now=datetime.now(UTC), model=name),
    )


def _rollout_context(session: ReadSession, rollout_id: str, user: DashboardUser) -> dict[str, Any]:
    with _page_errors():
        described = describe_rollout(session, get_rollout(session, rollout_id))
    commands = commands_for(described.status) if user.may_operate else []
    return {
        "user": user,
        "rollout": described,
        "waves": wave_progress(described),
        "commands": commands,
    }


@router.get("/rollouts/{rollout_id}")
def rollout_page(
    rollout_id: Name,
    request: Request,
    session: ReadSession,
    user: CurrentUser,
    queued: Annotated[str, Query(max_length=16)] = "",
) -> HTMLResponse:
    context = _rollout_context(session, rollout_id, user)
    return render(
        request,
        "rollout.html",
        {
            **context,
            "section": "overview",
            # Only a known word is echoed back: the page says which command was queued.
            "queued": queued if queued in set(DashboardCommand) else "",
        },
    )


@router.get("/rollouts/{rollout_id}/live")
def rollout_live(
    rollout_id: Name, request: Request, session: ReadSession, user: CurrentUser
) -> HTMLResponse:
    """The live part of the rollout page (status, waves, gates, buttons, events)."""
    return render(request, "_rollout_live.html", _rollout_context(session, rollout_id, user))


@router.get("/alerts")
def alerts_page(request: Request, session: ReadSession, user: CurrentUser) -> HTMLResponse:
    """Alert rules, the releases each finds degraded now, and recent episodes."""
    rules = session.exec(select(AlertRule).order_by(col(AlertRule.model_name))).all()
    episodes = session.exec(
        select(AlertEpisode).order_by(col(AlertEpisode.id).desc()).limit(ALERT_EPISODES)
    ).all()
    return _page(request, user, "alerts.html", "alerts", rules=rules, episodes=episodes)


@router.get("/channels")
def channels_page(request: Request, session: ReadSession, user: CurrentUser) -> HTMLResponse:
    """Every channel with its latest pipelines."""
    channels = [(c, channel_pipelines(session, c.name, limit=5)) for c in list_channels(session)]
    return _page(request, user, "channels.html", "channels", channels=channels)


@router.get("/channels/{name}")
def channel_page(
    name: Name,
    request: Request,
    session: ReadSession,
    user: CurrentUser,
    approved: Annotated[str, Query(max_length=32)] = "",
) -> HTMLResponse:
    """A channel's policy and each version's path through it, with the approve button."""
    with _page_errors():
        channel = get_channel(session, name)
    pipelines = channel_pipelines(session, name)
    return _page(
        request,
        user,
        "channel.html",
        "channels",
        channel=channel,
        pipelines=pipelines,
        # Only a pipeline id of this channel is echoed back.
        approved=approved if approved in {p.id for p in pipelines} else "",
    )


@router.get("/audit")
def audit_page(
    request: Request,
    session: ReadSession,
    user: CurrentUser,
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> HTMLResponse:
    entries = list_audit(session, limit=AUDIT_PAGE + 1, before_seq=before)
    return _page(
        request,
        user,
        "audit.html",
        "audit",
        entries=entries[:AUDIT_PAGE],
        older=entries[AUDIT_PAGE - 1].seq if len(entries) > AUDIT_PAGE else None,
        before=before,
    )
