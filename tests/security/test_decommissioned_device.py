"""A decommissioned device is cut off: its live MQTT session ends and its reports are dropped.

Found in the security review: decommissioning refused the device's next login, but its
open session stayed and everything it reported was still stored.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from fastapi import FastAPI

from controller.db import session_scope
from controller.devices.broker_auth import decommissioned_among, embedded_broker_config
from controller.devices.enrollment import Enrollment, decommission_device
from controller.mqtt.embedded_broker import BrokerLimits, EmbeddedBroker
from controller.mqtt.ingest import AppliedEvents, apply_events, apply_states
from controller.mqtt.telemetry import write_telemetry
from controller.settings import Settings
from tests.brokers import BrokerEndpoint, free_port, run_amqtt
from tests.controller import conftest as controller_fixtures
from tests.controller.devices.test_broker_auth import device_client, enroll
from tests.controller.mqtt.test_ingest import T0, event, state
from tests.controller.mqtt.test_telemetry import batch, window

app, settings, ctx = controller_fixtures.app, controller_fixtures.settings, controller_fixtures.ctx
TIMEOUT_S = 10.0


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'controller.db'}"


@pytest.fixture
def broker(app: FastAPI, settings: Settings) -> Iterator[tuple[BrokerEndpoint, Enrollment]]:
    device = enroll(app, "dev-a")
    port = free_port()
    broker_settings = settings.model_copy(update={"mqtt_host": "127.0.0.1", "mqtt_port": port})
    engine = ctx(app).engine
    make_broker = partial(
        EmbeddedBroker,
        limits=BrokerLimits(revocation_check_s=0.2),
        revoked_clients=partial(decommissioned_among, engine),
    )
    with run_amqtt(embedded_broker_config(broker_settings, engine), port, make_broker) as endpoint:
        yield endpoint, device


def decommission(app: FastAPI, device_id: str) -> None:
    with session_scope(ctx(app).engine) as session:
        decommission_device(session, device_id=device_id)


def test_a_decommissioned_device_is_disconnected_and_its_next_login_refused(
    app: FastAPI, broker: tuple[BrokerEndpoint, Enrollment]
) -> None:
    endpoint, device = broker
    disconnects: queue.Queue[object] = queue.Queue()
    with device_client(endpoint, device) as client:
        client._client.on_disconnect = lambda *args: disconnects.put(args)
        decommission(app, device.device_id)
        disconnects.get(timeout=TIMEOUT_S)  # raises queue.Empty if it stays connected
    with pytest.raises(ConnectionError), device_client(endpoint, device):
        pass


def test_states_events_and_telemetry_of_a_decommissioned_device_are_dropped(
    app: FastAPI,
) -> None:
    engine = ctx(app).engine
    enroll(app, "dev-a")
    enroll(app, "dev-b")
    decommission(app, "dev-b")

    states = [("dev-a", state("dev-a", T0)), ("dev-b", state("dev-b", T0))]
    assert apply_states(engine, states, now=T0) == 1
    events = [event("dev-a", 1, "fetching"), event("dev-b", 1, "fetching")]
    assert apply_events(engine, events, received_at_s=1) == AppliedEvents(applied=1, unknown=1)
    assert write_telemetry(engine, [batch("dev-a", window(T0)), batch("dev-b", window(T0))]) == 1
