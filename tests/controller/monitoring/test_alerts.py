"""Alert rules on each release's fleet health: one webhook per episode, with evidence."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from controller.db import session_scope
from controller.monitoring.alerts import create_rule, evaluate_alerts
from controller.monitoring.rules import judge
from controller.mqtt.telemetry import write_telemetry
from controller.rollouts.core import FleetHealth
from controller.rollouts.tables import RolloutEventRecord
from controller.rollouts.webhooks import sign_body
from controller.tokens import Role
from protocol import ReleaseRef, TelemetryBatch, TelemetryWindow
from tests.controller.conftest import bearer, ctx
from tests.controller.fleet_fixtures import add_devices
from tests.controller.rollouts import test_webhooks as webhook_tests
from tests.controller.rollouts.test_webhooks import SECRET, Receiver, deliver

# A controller posting webhooks to a real HTTP receiver (the webhook tests' fixtures).
hooked_app, receiver = webhook_tests.hooked_app, webhook_tests.receiver
NOW = datetime.now(UTC).replace(microsecond=0)
WINDOW_S = 600.0


def _report(
    app: FastAPI, devices: list[str], *, at: datetime, errors: int, version: int = 2
) -> None:
    """Each device sends one 100-request window of ``digits:version`` at ``at``."""
    release = ReleaseRef(model="digits", version=version, sha256="ab" * 32)
    write_telemetry(
        ctx(app).engine,
        [
            TelemetryBatch(
                device_id=device_id,
                seq=1,
                windows=[
                    TelemetryWindow(
                        model="digits",
                        release=release,
                        window_start=at,
                        window_s=10.0,
                        requests=100,
                        errors=errors,
                        nonfinite_outputs=0,
                    )
                ],
            )
            for device_id in devices
        ],
    )


def _create_rule(client: TestClient, tokens: dict[Role, str], **fields: Any) -> dict[str, Any]:
    body = {"model": "digits", "metric": "error_rate", "threshold": 0.05, "min_devices": 3}
    answer = client.post(
        "/api/v1/alert-rules", json={**body, **fields}, headers=bearer(tokens[Role.OPERATOR])
    )
    assert answer.status_code == 201, answer.text
    rule: dict[str, Any] = answer.json()
    return rule


def _evaluate(app: FastAPI, now: datetime) -> list[str]:
    return evaluate_alerts(ctx(app).engine, ctx(app).settings.artifacts_dir, now=now)


def _events(app: FastAPI) -> list[RolloutEventRecord]:
    with Session(ctx(app).engine) as session:
        return list(
            session.exec(
                select(RolloutEventRecord)
                .where(col(RolloutEventRecord.kind).in_(("model_degraded", "model_recovered")))
                .order_by(col(RolloutEventRecord.id))
            )
        )


def test_a_degraded_release_fires_once_then_recovers_once(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    rule = _create_rule(client, tokens)
    devices = add_devices(ctx(app).engine, 4)
    _report(app, devices, at=NOW - timedelta(seconds=60), errors=20)

    assert _evaluate(app, NOW) == ["model_degraded"]
    assert _evaluate(app, NOW + timedelta(seconds=30)) == []  # one episode, one webhook

    listed = client.get("/api/v1/alert-rules", headers=bearer(tokens[Role.VIEWER])).json()
    [firing] = listed[0]["firing"]
    assert (firing["version"], firing["value"]) == (2, 0.2)

    later = NOW + timedelta(seconds=WINDOW_S + 60)
    _report(app, devices, at=later - timedelta(seconds=30), errors=1)
    assert _evaluate(app, later) == ["model_recovered"]
    assert _evaluate(app, later + timedelta(seconds=30)) == []

    degraded, recovered = _events(app)
    assert (degraded.kind, recovered.kind) == ("model_degraded", "model_recovered")
    evidence = degraded.details
    assert (evidence["model"], evidence["version"], evidence["value"]) == ("digits", 2, 0.2)
    assert evidence["rule"]["id"] == rule["id"]
    assert (evidence["device_count"], evidence["devices"]) == (4, devices)
    assert evidence["health"]["requests"] == 400
    assert recovered.details["episode_id"] == degraded.details["episode_id"]
    assert recovered.details["value"] == 0.01
    assert degraded.rollout_id is None
    history = client.get("/api/v1/alerts", headers=bearer(tokens[Role.VIEWER])).json()
    assert [episode["ended_at"] is None for episode in history] == [False]


def test_too_few_devices_change_nothing(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    _create_rule(client, tokens, min_devices=3)
    devices = add_devices(ctx(app).engine, 2)
    _report(app, devices, at=NOW - timedelta(seconds=60), errors=90)

    assert _evaluate(app, NOW) == []


def test_a_release_that_stops_serving_ends_its_episode(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    _create_rule(client, tokens)
    devices = add_devices(ctx(app).engine, 3)
    _report(app, devices, at=NOW - timedelta(seconds=60), errors=30, version=2)
    assert _evaluate(app, NOW) == ["model_degraded"]

    # The fleet moved on to version 3 (healthy); version 2 sends nothing any more.
    later = NOW + timedelta(seconds=WINDOW_S + 60)
    _report(app, devices, at=later - timedelta(seconds=30), errors=0, version=3)

    assert _evaluate(app, later) == ["model_recovered"]
    assert _events(app)[-1].details["note"] == "no telemetry"


def test_each_release_of_the_model_has_its_own_episode(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    _create_rule(client, tokens)
    old, new = add_devices(ctx(app).engine, 3, prefix="old"), add_devices(ctx(app).engine, 3)
    _report(app, old, at=NOW - timedelta(seconds=60), errors=0, version=2)
    _report(app, new, at=NOW - timedelta(seconds=60), errors=50, version=3)

    assert _evaluate(app, NOW) == ["model_degraded"]
    assert _events(app)[0].details["version"] == 3


def test_a_rule_with_an_unknown_metric_is_refused(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    answer = client.post(
        "/api/v1/alert-rules",
        json={"model": "digits", "metric": "vibes", "threshold": 1.0},
        headers=bearer(tokens[Role.OPERATOR]),
    )
    assert answer.status_code == 422


def test_deleting_a_rule_closes_its_episodes_quietly(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    rule = _create_rule(client, tokens)
    devices = add_devices(ctx(app).engine, 3)
    _report(app, devices, at=NOW - timedelta(seconds=60), errors=30)
    _evaluate(app, NOW)

    answer = client.delete(
        f"/api/v1/alert-rules/{rule['id']}", headers=bearer(tokens[Role.OPERATOR])
    )

    assert answer.status_code == 200, answer.text
    history = client.get("/api/v1/alerts?open=true", headers=bearer(tokens[Role.VIEWER])).json()
    assert history == []
    assert [event.kind for event in _events(app)] == ["model_degraded"]


def test_the_degraded_webhook_reaches_a_receiver_signed_with_its_evidence(
    hooked_app: FastAPI, receiver: tuple[Receiver, str]
) -> None:
    with session_scope(ctx(hooked_app).engine) as session:
        create_rule(
            session,
            model="digits",
            metric="error_rate",
            threshold=0.05,
            window_s=WINDOW_S,
            min_devices=1,
            min_requests=100,
            actor="test",
        )
    devices = add_devices(ctx(hooked_app).engine, 2)
    _report(hooked_app, devices, at=NOW - timedelta(seconds=60), errors=40)
    _evaluate(hooked_app, NOW)

    assert deliver(hooked_app) == 1

    [(headers, body)] = receiver[0].received
    event = json.loads(body)
    assert headers["X-Edgefleet-Signature"] == sign_body(SECRET, body)
    assert (event["kind"], event["rollout_id"]) == ("model_degraded", None)
    assert (event["details"]["model"], event["details"]["devices"]) == ("digits", devices)


def test_label_error_rate_reads_the_ground_truth_applications_sent_back() -> None:
    health = FleetHealth(devices=3, requests=500, labeled=200, label_accuracy=0.8)
    unlabeled = FleetHealth(devices=3, requests=500)
    common = {"metric": "label_error_rate", "threshold": 0.1, "min_devices": 1}

    fired = judge(**common, min_requests=100, health=health, reference_confidence=None)
    silent = judge(**common, min_requests=100, health=unlabeled, reference_confidence=None)

    assert (fired.degraded, fired.value) == (True, pytest.approx(0.2))
    assert silent.degraded is None  # no labels: nothing to say
