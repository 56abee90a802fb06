"""The fleet service: the MQTT bridge and the rollout, publish, reconcile, alert and webhook loops.

``serve`` runs it beside the HTTP server. Phases: start (check settings, open the
bridge), run (loops until cancelled), stop (cancel, wait). Each loop's iteration is
guarded: an error is logged with its traceback and the loop goes on after its interval,
so one bad rollout or a database hiccup never stops the fleet.

One error does stop it: the broker refusing the controller's credentials
(``BrokerAuthError``). Every loop stops then, since no rollout could reach a device (and
devices that cannot report would count as failed); the service logs it once, marks
itself not ready (``FleetStatus``, read by ``/readyz``) and raises it, and ``serve``
exits with ``EXIT_BROKER_AUTH``.

Invariants:
- publishing follows the database: a desired state is published after the transaction
  that signed it committed, and marked published only after the broker acknowledged it;
- after every (re)connect of the bridge every desired state is published again, since a
  restarted broker may have lost its retained messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
from prometheus_client import CollectorRegistry

from .context import FleetStatus
from .db import session_scope
from .devices.desired import (
    DesiredMessage,
    mark_all_unpublished,
    mark_published,
    unpublished_messages,
)
from .devices.reconciler import renew_expiring_deployments
from .errors import BridgeError, BrokerAuthError
from .monitoring.alerts import evaluate_alerts
from .mqtt.bridge import MqttBridge, check_bridge_settings
from .mqtt.nats_ingest import NatsIngest
from .mqtt.telemetry import downsample_telemetry, prune_telemetry
from .rollouts.engine import FleetContext, active_rollout_ids, plan_rollout
from .rollouts.webhooks import deliver_webhooks
from .samples.capture import CaptureMessage, due_capture_orders, mark_capture_published

__all__ = ["FleetService"]

logger = logging.getLogger(__name__)

PUBLISH_BATCH = 500
CAPTURE_PUBLISH_INTERVAL_S = 1.0
WEBHOOK_INTERVAL_S = 2.0


class FleetService:
    def __init__(
        self,
        fleet: FleetContext,
        registry: CollectorRegistry | None = None,
        *,
        status: FleetStatus | None = None,
    ) -> None:
        check_bridge_settings(fleet.settings)
        self.fleet = fleet
        self.status = status or FleetStatus()
        self.bridge = MqttBridge(
            settings=fleet.settings,
            engine=fleet.engine,
            registry=registry,
            on_connected=self._on_connected,
        )
        # With a NATS cluster the reports come from JetStream; the bridge only publishes.
        self.nats = NatsIngest(fleet.settings, self.bridge) if fleet.settings.nats_url else None
        self._publish_wanted = asyncio.Event()

    async def run(self) -> None:
        """Run every loop until cancelled; raises ``BrokerAuthError`` (see above)."""
        try:
            await self._run_loops()
        except* BrokerAuthError as refused:
            error = refused.exceptions[0]
            self.status.not_ready_reason = "mqtt: the broker refused the controller's credentials"
            logger.error("%s; the fleet loops (ingest, rollouts, publishing) stopped", error)
            raise error  # noqa: B904 - the group only wraps it

    async def _run_loops(self) -> None:
        settings = self.fleet.settings
        async with httpx.AsyncClient() as http, asyncio.TaskGroup() as group:
            group.create_task(self.bridge.run(), name="mqtt-bridge")
            if self.nats is not None:
                group.create_task(self.nats.run(), name="nats-ingest")
            group.create_task(self._every(settings.plan_interval_s, self.plan_once), name="plan")
            group.create_task(self._publisher(), name="publish")
            group.create_task(
                self._every(settings.reconcile_interval_s, self.reconcile_once), name="reconcile"
            )
            group.create_task(
                self._every(WEBHOOK_INTERVAL_S, lambda: deliver_webhooks(self.fleet, http)),
                name="webhooks",
            )
            group.create_task(
                self._every(settings.alert_interval_s, self.evaluate_alerts_once), name="alerts"
            )
            group.create_task(
                self._every(CAPTURE_PUBLISH_INTERVAL_S, self.publish_capture_orders),
                name="capture-orders",
            )

    async def plan_once(self) -> None:
        now_s = time.time()
        for rollout_id in await asyncio.to_thread(active_rollout_ids, self.fleet.reader):
            result = await asyncio.to_thread(plan_rollout, self.fleet, rollout_id, now_s=now_s)
            if result is not None and result.actions:
                self._publish_wanted.set()

    async def evaluate_alerts_once(self) -> None:
        await asyncio.to_thread(
            evaluate_alerts,
            self.fleet.engine,
            self.fleet.settings.artifacts_dir,
            now=datetime.now(UTC),
            signer=self.fleet.signer,
        )

    async def publish_capture_orders(self) -> int:
        """Send recorded capture orders to their devices once online (not retained: a
        command is one-off); each is marked published once the broker acknowledged it."""
        prefix = self.fleet.settings.topic_prefix
        sent = 0
        while self.bridge.connected:
            due = await asyncio.to_thread(self._due_captures, prefix)
            if not due:
                break
            for message in due:
                await self.bridge.publish(message.topic, message.payload, retain=False)
                await asyncio.to_thread(self._mark_capture, message.order_id)
                sent += 1
        return sent

    def _due_captures(self, prefix: str) -> list[CaptureMessage]:
        with session_scope(self.fleet.engine) as session:
            return due_capture_orders(session, prefix, limit=PUBLISH_BATCH)

    def _mark_capture(self, order_id: int) -> None:
        with session_scope(self.fleet.engine) as session:
            mark_capture_published(session, [order_id], now=datetime.now(UTC))

    async def reconcile_once(self) -> None:
        now = datetime.now(UTC)
        settings = self.fleet.settings
        if await asyncio.to_thread(renew_expiring_deployments, self.fleet, now=now):
            self._publish_wanted.set()
        await asyncio.to_thread(
            downsample_telemetry,
            self.fleet.engine,
            older_than=now - timedelta(seconds=settings.telemetry_downsample_after_s),
            bucket_s=settings.telemetry_downsample_s,
        )
        await asyncio.to_thread(
            prune_telemetry,
            self.fleet.engine,
            older_than=now - timedelta(seconds=settings.telemetry_retention_s),
        )
        self._publish_wanted.set()  # also catches anything a failed publish left behind

    async def publish_due(self) -> int:
        """Publish every desired state the broker does not hold yet; returns the count.

        A batch's messages are in flight together (the broker acknowledges each on its
        own), and those acknowledged are marked published with one statement; a failed
        publish fails the pass once the others of its batch have been answered.
        """
        published = 0
        prefix = self.fleet.settings.topic_prefix
        while self.bridge.connected:
            batch = await asyncio.to_thread(self._due, prefix)
            if not batch:
                break
            outcomes = await asyncio.gather(
                *(
                    self.bridge.publish(message.topic, message.payload, retain=True)
                    for message in batch
                ),
                return_exceptions=True,
            )
            done = [m for m, outcome in zip(batch, outcomes, strict=True) if outcome is None]
            if done:
                await asyncio.to_thread(self._mark, done)
            published += len(done)
            failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            if failed:
                raise failed[0]
        return published

    def _due(self, prefix: str) -> list[DesiredMessage]:
        # A read: on SQLite it must not hold the write lock while it builds the messages.
        with session_scope(self.fleet.reader) as session:
            return unpublished_messages(session, prefix, limit=PUBLISH_BATCH)

    def _mark(self, messages: list[DesiredMessage]) -> None:
        with session_scope(self.fleet.engine) as session:
            mark_published(session, messages)

    async def _on_connected(self) -> None:
        count = await asyncio.to_thread(self._mark_all_unpublished)
        logger.info("MQTT bridge connected: publishing %d desired states again", count)
        self._publish_wanted.set()

    def _mark_all_unpublished(self) -> int:
        with session_scope(self.fleet.engine) as session:
            return mark_all_unpublished(session)

    async def _publisher(self) -> None:
        while True:
            await self._publish_wanted.wait()
            self._publish_wanted.clear()
            try:
                count = await self.publish_due()
                if count:
                    logger.info("published %d desired states", count)
            except BridgeError as exc:
                logger.warning("publishing desired state paused: %s", exc)
                await asyncio.sleep(1.0)
                self._publish_wanted.set()
            except Exception:
                logger.exception("publishing desired state failed")
                await asyncio.sleep(1.0)
                self._publish_wanted.set()

    @staticmethod
    async def _every(interval_s: float, step: Callable[[], Awaitable[object]]) -> None:
        while True:
            try:
                await step()
            except Exception:
                logger.exception("fleet loop step failed; retrying after %.1f s", interval_s)
            await asyncio.sleep(interval_s)
