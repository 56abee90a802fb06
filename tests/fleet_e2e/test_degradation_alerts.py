"""A fleet whose inputs shift raises model_degraded once, then model_recovered after a
corrected release, on real agents, a real broker and a real webhook receiver.

The digits model serves its own kind of images first: nothing fires. Then every camera's
exposure flips (each pixel p becomes 1 - p): the input drift pooled over the fleet passes
the rule's threshold, and exactly one ``model_degraded`` arrives, naming the release and
the devices. A corrected release (here the same network, profiled on the new kind of
images: what retraining on them would be measured against) rolls out; the old release
stops serving and its episode ends with one ``model_recovered``; the new one does not
fire.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from simulator.demo_models import build_digits_model
from tests.brokers import BrokerEndpoint
from tests.controller.rollouts import test_webhooks as webhook_tests
from tests.controller.rollouts.test_webhooks import Receiver

from .conftest import Fleet, make_fleet
from .test_drift_is_not_a_release_gate import digits_requests, rollout_completes

pytestmark = pytest.mark.timeout(600)

# A real HTTP receiver for the webhooks (the webhook tests' fixture).
receiver = webhook_tests.receiver
WINDOW_S = 30.0  # the shortest window a rule takes
WAIT_S = 180.0


@pytest.fixture
def alerting_fleet(
    tmp_path: Path, mosquitto: BrokerEndpoint, receiver: tuple[Receiver, str]
) -> Iterator[Fleet]:
    running = make_fleet(
        tmp_path,
        mosquitto,
        settings={"EDGEFLEET_ALERT_INTERVAL_S": "2", "EDGEFLEET_WEBHOOK_URLS": receiver[1]},
    )
    try:
        yield running
    finally:
        running.close()


def _alert_events(receiver: Receiver) -> list[dict[str, Any]]:
    events = [json.loads(body) for _headers, body in receiver.received]
    return [e for e in events if e["kind"] in ("model_degraded", "model_recovered")]


def _wait_for(fleet: Fleet, receiver: Receiver, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    while len(_alert_events(receiver)) < count:
        assert time.monotonic() < deadline, f"alerts so far: {_alert_events(receiver)}\n" + (
            fleet.context()
        )
        time.sleep(1.0)
    return _alert_events(receiver)


def _traffic(fleet: Fleet, transform: str) -> None:
    for agent in fleet.agents:
        agent.stop_traffic()
        agent.start_traffic("digits", bodies=digits_requests(transform), interval_s=0.05)


def test_shifted_inputs_raise_one_alert_and_a_corrected_release_ends_it(
    alerting_fleet: Fleet, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    fleet, (hooks, _url) = alerting_fleet, receiver
    model, validation = build_digits_model(tmp_path)
    fleet.enroll(3)
    fleet.start_agents()
    _traffic(fleet, "as_is")
    first = fleet.api.push_and_release("digits", model, validation)
    rollout_completes(fleet, f"digits:{first}")
    rule = fleet.api.call(
        "POST",
        "/api/v1/alert-rules",
        json={
            "model": "digits",
            "metric": "input_drift_psi",
            "threshold": 0.25,
            "window_s": WINDOW_S,
            "min_devices": 3,
            "min_requests": 200,
        },
    )
    time.sleep(WINDOW_S / 2)  # in-distribution traffic, evaluated several times
    assert _alert_events(hooks) == []

    _traffic(fleet, "inverted")
    [degraded] = _wait_for(fleet, hooks, 1)
    details = degraded["details"]
    assert (degraded["kind"], details["model"], details["version"]) == (
        "model_degraded",
        "digits",
        first,
    )
    assert details["rule"]["id"] == rule["id"]
    assert details["device_count"] == 3
    assert sorted(details["devices"]) == sorted(a.device_id for a in fleet.agents)
    assert details["value"] > 0.25

    # The corrected release: profiled on the images the cameras now take.
    inverted = tmp_path / "digits-inverted-validation.npz"
    with np.load(validation) as data:
        np.savez(inverted, input=1.0 - data["input"], labels=data["labels"])
    second = fleet.api.push_and_release(
        "digits", model.rename(tmp_path / "digits-2.onnx"), inverted
    )
    rollout_completes(fleet, f"digits:{second}")

    events = _wait_for(fleet, hooks, 2)
    assert [e["kind"] for e in events] == ["model_degraded", "model_recovered"]
    assert events[1]["details"]["version"] == first
    time.sleep(WINDOW_S / 2)  # the corrected release serves the same traffic: no new alert
    assert len(_alert_events(hooks)) == 2
    assert all(a.traffic is not None and not a.traffic.failures for a in fleet.agents)
