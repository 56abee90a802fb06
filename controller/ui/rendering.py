"""Templates and responses: Jinja2 with autoescaping, a few formatting filters, and the
security headers every dashboard page carries.

Invariants: every template is autoescaped (values are text unless a filter says
otherwise, and none here does); pages are never cached and never framed (the buttons
cannot be clickjacked); the content security policy allows scripts, styles and requests
from this origin only, so an injected ``<script>`` or inline handler would not run.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import BaseModel

from ..rollouts.core import format_duration

__all__ = ["SECURITY_HEADERS", "STATIC_DIR", "make_templates", "render"]

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def make_templates() -> Jinja2Templates:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=StrictUndefined,  # a misspelt name fails the page's test, not silently
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=format_when,
        num=format_number,
        pretty_json=pretty_json,
        compact_json=compact_json,
        duration=format_duration,
        short_sha=lambda value: (value or "")[:12],
        size=format_size,
        days_until=days_until,
    )
    return Jinja2Templates(env=env)


def render(
    request: Request, template: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.dashboard.templates
    response = templates.TemplateResponse(
        request, template, context, status_code=status_code, headers=SECURITY_HEADERS
    )
    assert isinstance(response, HTMLResponse)
    return response


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC).
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def format_when(value: datetime | str | float | None) -> str:
    """A timestamp (datetime, ISO text or unix seconds) as ``YYYY-MM-DD HH:MM:SS UTC``."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return value
    elif isinstance(value, int | float):
        when = datetime.fromtimestamp(value, UTC)
    else:
        when = value
    return _as_utc(when).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def days_until(value: datetime | str | None) -> int | None:
    """Whole days from now until an ISO timestamp (negative once past); None without one."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else value
    except ValueError:
        return None
    return (_as_utc(when) - datetime.now(UTC)).days


def format_number(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):  # bool too
        return str(value)
    return f"{value:.{digits}g}"


def format_size(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def pretty_json(value: Any) -> str:
    """JSON for a ``<pre>``: plain text, so autoescaping still applies to it."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def compact_json(value: Any) -> str:
    """JSON on one line, as plain text (autoescaped like any other value)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, sort_keys=True, default=str, separators=(", ", ": "))
