"""When the MQTT broker refuses the controller's credentials, the fleet service stops
every loop, says so once, and ``/readyz`` reports the controller not ready."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from controller.errors import BrokerAuthError
from controller.rollouts.engine import FleetContext
from controller.service import FleetService
from tests.brokers import MosquittoServer
from tests.controller.conftest import ctx

WAIT_S = 30.0


def test_refused_credentials_stop_the_fleet_and_readyz_says_why(
    app: FastAPI,
    client: TestClient,
    password_mosquitto: tuple[MosquittoServer, str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, user, _password = password_mosquitto
    context = ctx(app)
    settings = context.settings.model_copy(
        update={
            "broker": server.endpoint.url,
            "controller_id": f"test-{uuid.uuid4().hex[:8]}",
            "mqtt_username": user,
            "mqtt_password": "wrong password",
        }
    )
    fleet = FleetContext(settings=settings, engine=context.engine, signer=context.signer)
    service = FleetService(fleet, CollectorRegistry(), status=context.fleet_status)
    assert client.get("/readyz").status_code == 200

    async def scenario() -> None:
        async with asyncio.timeout(WAIT_S):
            await service.run()

    with (
        caplog.at_level(logging.ERROR, logger="controller.service"),
        pytest.raises(BrokerAuthError),
    ):
        asyncio.run(scenario())

    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {
        "status": "unavailable",
        "reason": "mqtt: the broker refused the controller's credentials",
    }
    stopped = [record for record in caplog.records if "fleet loops" in record.getMessage()]
    assert len(stopped) == 1
