"""Webhooks: rollout paused, aborted, completed, and device rolled back, delivered at least once.

Each event row is claimed in a short transaction (``FOR UPDATE SKIP LOCKED``, so replicas
share the work), posted to every configured URL outside any transaction, then marked
delivered, or put back with one more attempt, or failed after the last. A receiver may
see an event twice (a crash after the POST, before the mark): ``X-Edgefleet-Event-Id``
lets it deduplicate. With ``webhook_secret`` set, ``X-Edgefleet-Signature`` is
``sha256=<hex HMAC-SHA256 of the body>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import update
from sqlmodel import col, select

from ..db import session_scope
from ..tables import utcnow
from .engine import WEBHOOK_KINDS, FleetContext
from .tables import RolloutEventRecord

__all__ = ["WebhookDelivery", "deliver_webhooks", "sign_body"]

logger = logging.getLogger(__name__)

CLAIM_BATCH = 20
# A claim older than this was lost with its controller: the event is sent again.
CLAIM_EXPIRY_S = 120.0


@dataclass(frozen=True)
class WebhookDelivery:
    event_id: int
    body: bytes


def sign_body(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


async def deliver_webhooks(fleet: FleetContext, client: httpx.AsyncClient) -> int:
    """Send what is pending; returns how many events were delivered."""
    claimed = await asyncio.to_thread(_claim, fleet)
    delivered = 0
    for delivery in claimed:
        ok = await _post_everywhere(fleet, client, delivery)
        await asyncio.to_thread(_settle, fleet, delivery.event_id, ok)
        delivered += ok
    return delivered


def _claim(fleet: FleetContext) -> list[WebhookDelivery]:
    settings = fleet.settings
    now = utcnow()
    with session_scope(fleet.engine) as session:
        if not settings.webhook_urls:
            session.execute(
                update(RolloutEventRecord)
                .where(col(RolloutEventRecord.webhook_status) == "pending")
                .values(webhook_status="none")
            )
            return []
        session.execute(
            update(RolloutEventRecord)
            .where(
                col(RolloutEventRecord.webhook_status) == "sending",
                col(RolloutEventRecord.at) < now - timedelta(seconds=CLAIM_EXPIRY_S),
            )
            .values(webhook_status="pending")
        )
        rows = session.exec(
            select(RolloutEventRecord)
            .where(RolloutEventRecord.webhook_status == "pending")
            .order_by(col(RolloutEventRecord.id))
            .limit(CLAIM_BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        deliveries = []
        for row in rows:
            if row.kind not in WEBHOOK_KINDS:
                row.webhook_status = "none"
            else:
                row.webhook_status = "sending"
                deliveries.append(WebhookDelivery(row.id or 0, _body(row)))
            session.add(row)
        return deliveries


def _body(row: RolloutEventRecord) -> bytes:
    document: dict[str, Any] = {
        "id": row.id,
        "kind": row.kind,
        "at": row.at.isoformat(),
        "rollout_id": row.rollout_id,
        "device_id": row.device_id,
        "details": row.details,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


async def _post_everywhere(
    fleet: FleetContext, client: httpx.AsyncClient, delivery: WebhookDelivery
) -> bool:
    settings = fleet.settings
    headers = {
        "Content-Type": "application/json",
        "X-Edgefleet-Event-Id": str(delivery.event_id),
    }
    if settings.webhook_secret:
        headers["X-Edgefleet-Signature"] = sign_body(settings.webhook_secret, delivery.body)
    ok = True
    for url in settings.webhook_urls:
        try:
            response = await client.post(
                url, content=delivery.body, headers=headers, timeout=settings.webhook_timeout_s
            )
            if response.status_code >= 300:
                logger.warning("webhook %s answered %d", url, response.status_code)
                ok = False
        except httpx.HTTPError as exc:
            logger.warning("webhook %s failed: %s", url, exc)
            ok = False
    return ok


def _settle(fleet: FleetContext, event_id: int, ok: bool) -> None:
    with session_scope(fleet.engine) as session:
        row = session.get(RolloutEventRecord, event_id)
        if row is None:
            return
        row.webhook_attempts += 1
        if ok:
            row.webhook_status = "delivered"
        elif row.webhook_attempts >= fleet.settings.webhook_max_attempts:
            row.webhook_status = "failed"
            logger.error(
                "webhook event %d dropped after %d attempts", event_id, row.webhook_attempts
            )
        else:
            row.webhook_status = "pending"
        session.add(row)
