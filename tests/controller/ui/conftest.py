"""A fleet to look at through the dashboard, and a browser-like way to log in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from controller.db import session_scope
from controller.devices.tables import DeviceEventRecord, DeviceRecord, telemetry_table
from controller.registry.tables import ModelVersion
from controller.rollouts.engine import plan_rollout
from controller.rollouts.tables import RolloutAssignmentRecord
from controller.tokens import Role
from tests.controller.conftest import bearer, ctx
from tests.controller.fleet_fixtures import add_devices, add_release, fleet_of

NOW_S = 1_900_000_000.0
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EVIL = "<script>alert(1)</script>"
CSRF_FIELD = re.compile(r'name="csrf" value="([0-9a-f]*)"')
NONCE_FIELD = re.compile(r'name="nonce" value="([^"]+)"')


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # The pages read through the data functions the API tests run on both databases;
    # what is checked here (sessions, roles, forms, templates) does not depend on it.
    return f"sqlite:///{tmp_path / 'controller.db'}"


def log_in(client: TestClient, token: str, next_url: str = "/ui") -> None:
    """What a browser does: load the form, post it back with its nonce."""
    form = client.get("/ui/login")
    nonce = NONCE_FIELD.search(form.text)
    assert nonce is not None, form.text
    answer = client.post(
        "/ui/login",
        data={"token": token, "nonce": nonce[1], "next": next_url},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text


def csrf_of(html: str) -> str:
    match = CSRF_FIELD.search(html)
    assert match is not None, "no form with a CSRF token on the page"
    return match[1]


@dataclass(frozen=True)
class DashboardFleet:
    """Five devices, two releases of ``digits``, and a rollout judged past its canary."""

    rollout_id: str
    device_id: str


@pytest.fixture
def dashboard_fleet(app: FastAPI, client: TestClient, tokens: dict[Role, str]) -> DashboardFleet:
    context = ctx(app)
    v1 = add_release(context, "digits", 1)
    add_release(context, "digits", 2)
    with session_scope(context.engine) as session:
        parent = session.exec(select(ModelVersion).where(ModelVersion.version == 1)).one()
        variant = session.exec(select(ModelVersion).where(ModelVersion.version == 2)).one()
        variant.origin, variant.variant_mode, variant.status = "variant", "int8-dynamic", "accepted"
        variant.parent_id = parent.id
        variant.report = {"size_ratio": 0.26, "latency_ratio": 0.8, "top1_agreement": 0.995}
        session.add(variant)
    ids = add_devices(context.engine, 4, running=v1, labels={"site": "berlin"})
    add_devices(context.engine, 1, online=False, prefix="far", labels={"site": EVIL})
    with session_scope(context.engine) as session:
        device = session.get(DeviceRecord, ids[0])
        assert device is not None
        device.phase, device.agent_version = "committed", "0.1.0"
        device.reported_state = {"phase": "committed", "note": EVIL}
        session.add(device)
        session.add(
            DeviceEventRecord(
                device_id=ids[0], seq=1, type="committed", at=T0, model_name="digits", version=1
            )
        )
        session.connection().execute(
            telemetry_table.insert(),
            [
                {
                    "device_id": ids[0],
                    "model_name": "digits",
                    "version": 1,
                    "window_start": T0,
                    "window_s": 10.0,
                    "requests": 120,
                    "errors": 1,
                    "nonfinite": 0,
                    "p50_ms": 2.5,
                    "p95_ms": 4.25,
                    "p99_ms": 6.0,
                    "confidence_mean": 0.91,
                    "max_drift_psi": 0.02,
                    "merged": 1,
                }
            ],
        )
    answer = client.post(
        "/api/v1/rollouts",
        json={
            "release": "digits:2",
            "selector": "site=berlin",
            "waves": "1,50%,100%",
            "soak": "0s",
            "gates": {"min_health_requests": 0},
        },
        headers=bearer(tokens[Role.OPERATOR]),
    )
    assert answer.status_code == 201, answer.text
    rollout_id: str = answer.json()["id"]
    fleet = fleet_of(context)
    plan_rollout(fleet, rollout_id, now_s=NOW_S)  # assigns the canary
    _commit_pending(app, rollout_id)
    plan_rollout(fleet, rollout_id, now_s=NOW_S + 1)  # judges it, starts wave 2
    return DashboardFleet(rollout_id=rollout_id, device_id=ids[0])


def _commit_pending(app: FastAPI, rollout_id: str) -> None:
    """What the bridge records when the assigned devices report a commit."""
    with session_scope(ctx(app).engine) as session:
        for row in session.exec(
            select(RolloutAssignmentRecord).where(
                RolloutAssignmentRecord.rollout_id == rollout_id,
                RolloutAssignmentRecord.outcome == "pending",
            )
        ).all():
            row.outcome, row.reported_at_s = "committed", NOW_S
            session.add(row)
