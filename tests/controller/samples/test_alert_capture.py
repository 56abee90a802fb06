"""Alert rules that capture samples: when one fires, capture turns on for the degraded
release's devices, and the webhook's evidence links to the model's samples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from controller.db import session_scope
from controller.devices.tables import DeviceModelRecord
from controller.monitoring.alerts import evaluate_alerts
from controller.samples.capture import active_captures
from controller.samples.tables import CaptureOrderRecord
from controller.tokens import Role
from tests.controller.conftest import ctx
from tests.controller.fleet_fixtures import add_devices
from tests.controller.monitoring.test_alerts import _create_rule, _events, _report

NOW = datetime.now(UTC).replace(microsecond=0)
CAPTURE = {"below_confidence": 0.6, "per_hour": 10, "max_bytes": 1_000_000, "for_s": 7200}


def _fire(app: FastAPI, signer: bool = True) -> None:
    devices = add_devices(ctx(app).engine, 3)
    _report(app, devices, at=NOW - timedelta(seconds=60), errors=20)
    assert evaluate_alerts(
        ctx(app).engine,
        ctx(app).settings.artifacts_dir,
        now=NOW,
        signer=ctx(app).signer if signer else None,
    ) == ["model_degraded"]


def test_firing_rule_turns_capture_on_and_links_the_samples(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    rule = _create_rule(client, tokens, capture=CAPTURE)
    assert rule["capture"] == CAPTURE
    _fire(app)
    [degraded] = _events(app)
    samples = degraded.details["samples"]
    assert samples["url"].startswith("/api/v1/samples?model=digits&since=")
    assert samples["export"].startswith("edgefleet samples export --model digits --since ")
    with Session(ctx(app).engine) as session:
        orders = session.exec(select(CaptureOrderRecord)).all()
        active = active_captures(session, now=NOW, model="digits")
    assert sorted(o.device_id for o in orders) == sorted(degraded.details["devices"])
    assert {o.source for o in orders} == {f"alert {rule['id']}"}
    assert all(a.until == NOW + timedelta(seconds=7200) for a in active)
    assert len(active) == 3


def test_rule_without_capture_links_no_samples(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    _create_rule(client, tokens)
    _fire(app)
    [degraded] = _events(app)
    assert degraded.details["samples"] is None
    with Session(ctx(app).engine) as session:
        assert session.exec(select(CaptureOrderRecord)).all() == []


def test_capture_ordered_by_an_operator_is_linked_too(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    _create_rule(client, tokens)
    devices = add_devices(ctx(app).engine, 3, prefix="cap")
    with session_scope(ctx(app).engine) as session:
        for device_id in devices:
            session.add(DeviceModelRecord(device_id=device_id, model_name="digits"))
    answer = client.post(
        "/api/v1/capture",
        json={"model": "digits", "for_s": 86400},
        headers={"Authorization": f"Bearer {tokens[Role.OPERATOR]}"},
    )
    assert answer.status_code == 201, answer.text
    _fire(app, signer=False)
    [degraded] = _events(app)
    assert degraded.details["samples"]["model"] == "digits"
