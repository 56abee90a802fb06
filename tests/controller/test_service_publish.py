"""The fleet service's publisher: a batch of desired states is in flight at once, and
only what the broker acknowledged is marked published (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI

from controller.db import session_scope
from controller.devices.desired import sign_deployments, unpublished_messages
from controller.errors import BridgeError
from controller.service import FleetService
from tests.controller.conftest import ctx
from tests.controller.fleet_fixtures import add_devices, add_release, fleet_of

NOW_S = 1_900_000_000.0


class FakeBridge:
    """Acknowledges every publish after a few turns of the loop, except ``refuse``'s."""

    def __init__(self, refuse: str | None = None) -> None:
        self.connected = True
        self.refuse = refuse
        self.topics: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        assert retain
        assert payload
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            if self.refuse is not None and self.refuse in topic:
                raise BridgeError(f"no PUBACK for {topic}")
            self.topics.append(topic)
        finally:
            self.in_flight -= 1


def service_with(app: FastAPI, bridge: FakeBridge) -> FleetService:
    service = FleetService(fleet_of(ctx(app)))
    service.bridge = bridge  # type: ignore[assignment]
    return service


def signed_devices(app: FastAPI, count: int) -> list[str]:
    context = ctx(app)
    release = add_release(context, "digits", 1)
    devices = add_devices(context.engine, count)
    with session_scope(context.engine) as session:
        sign_deployments(
            session,
            device_ids=devices,
            release=release,
            signer=context.signer,
            now=datetime.fromtimestamp(NOW_S, UTC),
            ttl_s=3600,
            rollout_id=None,
        )
    return devices


def due_devices(app: FastAPI) -> list[str]:
    with session_scope(ctx(app).engine) as session:
        return [m.device_id for m in unpublished_messages(session, "edgefleet/v1", limit=100)]


def test_a_batch_is_published_with_every_message_in_flight_and_all_marked(app: FastAPI) -> None:
    devices = signed_devices(app, 5)
    bridge = FakeBridge()

    published = asyncio.run(service_with(app, bridge).publish_due())

    assert published == 5
    assert bridge.most_in_flight == 5
    assert sorted(bridge.topics) == [f"edgefleet/v1/{d}/desired" for d in devices]
    assert due_devices(app) == []


def test_an_unacknowledged_state_stays_due_and_the_others_are_marked(app: FastAPI) -> None:
    devices = signed_devices(app, 4)
    bridge = FakeBridge(refuse=devices[2])

    with pytest.raises(BridgeError):
        asyncio.run(service_with(app, bridge).publish_due())

    assert len(bridge.topics) == 3
    assert due_devices(app) == [devices[2]]
