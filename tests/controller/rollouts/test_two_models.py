"""Several models per device: each model has its own desired deployment, and rollouts of
different models run on the same devices without touching each other's rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from controller.devices.desired import sign_deployment, unpublished_messages
from controller.devices.tables import DeviceModelRecord
from controller.registry.tables import ReleaseRecord
from controller.rollouts.engine import plan_rollout
from controller.rollouts.tables import RolloutRecord
from controller.tokens import Role
from protocol import Deployment, DesiredState, Envelope, verify_document
from tests.controller.conftest import bearer, ctx
from tests.controller.fleet_fixtures import add_devices, add_release, fleet_of
from tests.controller.rollouts.test_engine import NOW_S, assignments, desired_deployment

ROLLOUT = {"waves": "100%", "soak": "1h"}
NOW = datetime.fromtimestamp(NOW_S, UTC)


@pytest.fixture
def releases(app: FastAPI) -> dict[str, ReleaseRecord]:
    context = ctx(app)
    return {
        f"{model}:{version}": add_release(context, model, version)
        for model in ("digits", "cats")
        for version in (1, 2)
    }


def start(client: TestClient, token: str, release: str) -> dict[str, Any]:
    answer = client.post(
        "/api/v1/rollouts", json={"release": release, **ROLLOUT}, headers=bearer(token)
    )
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def model_row(app: FastAPI, device_id: str, model: str) -> DeviceModelRecord:
    with Session(ctx(app).engine) as session:
        row = session.get(DeviceModelRecord, (device_id, model))
        assert row is not None
        return row


def test_the_desired_payload_lists_the_newest_deployment_of_each_model(
    app: FastAPI, releases: dict[str, ReleaseRecord]
) -> None:
    context = ctx(app)
    [device_id] = add_devices(context.engine, 1)
    with Session(context.engine) as session:
        for name in ("digits:1", "cats:1", "digits:2"):
            sign_deployment(
                session,
                device_id=device_id,
                release=releases[name],
                signer=context.signer,
                now=NOW,
                ttl_s=3600,
                rollout_id=None,
            )
        session.commit()
        [message] = unpublished_messages(session, context.settings.topic_prefix, limit=10)

    state = DesiredState.from_payload(message.payload)
    deployments = [
        verify_document(Envelope.from_json_obj(obj), Deployment, context.signer.trust_root)
        for obj in state.deployments
    ]
    assert state.device_id == device_id
    assert [(d.model, d.sequence) for d in deployments] == [("cats", 2), ("digits", 3)]
    assert message.sequence == 3


def test_rollouts_of_two_models_on_the_same_devices_both_proceed(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], releases: dict[str, ReleaseRecord]
) -> None:
    context = ctx(app)
    devices = add_devices(context.engine, 3, running=[releases["digits:1"], releases["cats:1"]])
    operator = tokens[Role.OPERATOR]
    digits = start(client, operator, "digits:2")
    cats = start(client, operator, "cats:2")
    fleet = fleet_of(context)

    plan_rollout(fleet, digits["id"], now_s=NOW_S)
    plan_rollout(fleet, cats["id"], now_s=NOW_S)

    digits_rows = assignments(app, digits["id"])
    cats_rows = assignments(app, cats["id"])
    assert [r.device_id for r in digits_rows] == [r.device_id for r in cats_rows] == devices
    for row in digits_rows + cats_rows:
        model = "digits" if row.rollout_id == digits["id"] else "cats"
        deployment = desired_deployment(app, row.device_id, model)
        assert deployment.sequence == row.deployment_sequence
        assert deployment.rollout_id == row.rollout_id
    assert {r.deployment_sequence for r in digits_rows} == {1}
    assert {r.deployment_sequence for r in cats_rows} == {2}


def test_aborting_one_models_rollout_orders_that_model_back_and_leaves_the_other_alone(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], releases: dict[str, ReleaseRecord]
) -> None:
    context = ctx(app)
    [device_id] = add_devices(context.engine, 1, running=[releases["digits:1"], releases["cats:1"]])
    operator = tokens[Role.OPERATOR]
    digits = start(client, operator, "digits:2")
    cats = start(client, operator, "cats:2")
    assert cats["last_good"] == "cats:1"
    fleet = fleet_of(context)
    plan_rollout(fleet, digits["id"], now_s=NOW_S)
    plan_rollout(fleet, cats["id"], now_s=NOW_S)
    digits_before = model_row(app, device_id, "digits")

    answer = client.post(f"/api/v1/rollouts/{cats['id']}/abort", headers=bearer(operator))
    assert answer.status_code == 200, answer.text
    plan_rollout(fleet, cats["id"], now_s=NOW_S + 1)

    back = desired_deployment(app, device_id, "cats")
    assert back.rollback
    assert back.release_envelope().to_json_obj() == (
        Envelope.from_bytes(releases["cats:1"].envelope.encode()).to_json_obj()
    )
    assert model_row(app, device_id, "digits").model_dump() == digits_before.model_dump()
    with Session(context.engine) as session:
        statuses = {r.model_name: r.status for r in session.exec(select(RolloutRecord)).all()}
    assert statuses == {"digits": "running", "cats": "aborted"}
