"""The rollout loop over a real database: plans are stored, signed, and never doubled."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from controller.devices.desired import mark_published, unpublished_messages
from controller.devices.tables import DeviceModelRecord
from controller.mqtt.telemetry import write_telemetry
from controller.registry.tables import ReleaseRecord
from controller.rollouts.engine import plan_rollout
from controller.rollouts.tables import RolloutAssignmentRecord, RolloutEventRecord, RolloutRecord
from controller.samples.tables import CaptureOrderRecord
from controller.tokens import Role
from protocol import (
    Deployment,
    Envelope,
    ReleaseRef,
    TelemetryBatch,
    TelemetryWindow,
    verify_document,
)
from tests.controller.conftest import bearer, ctx
from tests.controller.fleet_fixtures import add_devices, add_release, fleet_of, set_running

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

NOW_S = 1_900_000_000.0


@pytest.fixture
def fleet_app(app: FastAPI) -> FastAPI:
    context = ctx(app)
    add_release(context, "digits", 1)
    add_release(context, "digits", 2)
    return app


def start_rollout(client: TestClient, token: str, **fields: Any) -> dict[str, Any]:
    body = {"release": "digits:2", "waves": "1,50%,100%", "soak": "0s", **fields}
    answer = client.post("/api/v1/rollouts", json=body, headers=bearer(token))
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def assignments(app: FastAPI, rollout_id: str) -> list[RolloutAssignmentRecord]:
    with Session(ctx(app).engine) as session:
        return list(
            session.exec(
                select(RolloutAssignmentRecord)
                .where(RolloutAssignmentRecord.rollout_id == rollout_id)
                .order_by(col(RolloutAssignmentRecord.id))
            ).all()
        )


def report(app: FastAPI, rollout_id: str, outcome: str, *, at_s: float = NOW_S) -> None:
    """What the bridge does when devices send final events: outcome, and the model run."""
    engine = ctx(app).engine
    with Session(engine) as session:
        release = session.exec(select(ReleaseRecord).where(ReleaseRecord.version == 2)).one()
        for row in session.exec(
            select(RolloutAssignmentRecord).where(
                RolloutAssignmentRecord.rollout_id == rollout_id,
                RolloutAssignmentRecord.outcome == "pending",
            )
        ).all():
            row.outcome, row.reported_at_s = outcome, at_s
            session.add(row)
            if outcome == "committed":
                set_running(session, row.device_id, release)
        session.commit()


def desired_deployment(app: FastAPI, device_id: str, model: str = "digits") -> Deployment:
    """The deployment of ``model`` the device is told to take (verified)."""
    context = ctx(app)
    with Session(context.engine) as session:
        row = session.get(DeviceModelRecord, (device_id, model))
        assert row is not None
        assert row.desired_envelope is not None
        envelope = Envelope.from_bytes(row.desired_envelope.encode())
    deployment = verify_document(envelope, Deployment, context.signer.trust_root)
    assert deployment.model == model
    return deployment


def desired_envelope(app: FastAPI, device_id: str, model: str = "digits") -> str | None:
    with Session(ctx(app).engine) as session:
        row = session.get(DeviceModelRecord, (device_id, model))
        return None if row is None else row.desired_envelope


def test_canary_gets_one_signed_deployment_and_replanning_assigns_nothing_more(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    context = ctx(fleet_app)
    devices = add_devices(context.engine, 10)
    rollout = start_rollout(client, tokens[Role.OPERATOR])
    fleet = fleet_of(context)

    plan_rollout(fleet, rollout["id"], now_s=NOW_S)
    plan_rollout(fleet, rollout["id"], now_s=NOW_S + 1)

    rows = assignments(fleet_app, rollout["id"])
    assert [row.device_id for row in rows] == devices[:1]
    deployment = desired_deployment(fleet_app, devices[0])
    assert deployment.device_id == devices[0]
    assert deployment.rollout_id == rollout["id"]
    assert deployment.release_envelope().to_json_obj()["payloadType"].endswith("release+json")
    assert rows[0].deployment_sequence == deployment.sequence == 1


def test_waves_advance_as_devices_commit_until_every_matching_device_runs_the_release(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    context = ctx(fleet_app)
    add_devices(context.engine, 10)
    add_devices(context.engine, 3, labels={"site": "paris"}, prefix="other")
    rollout = start_rollout(client, tokens[Role.OPERATOR], selector="site=berlin")
    fleet = fleet_of(context)

    sizes = []
    for step in range(4):
        plan_rollout(fleet, rollout["id"], now_s=NOW_S + step)
        sizes.append(len(assignments(fleet_app, rollout["id"])))
        report(fleet_app, rollout["id"], "committed", at_s=NOW_S + step)
    plan_rollout(fleet, rollout["id"], now_s=NOW_S + 10)

    assert sizes == [1, 5, 10, 10]
    detail = client.get(f"/api/v1/rollouts/{rollout['id']}", headers=bearer(tokens[Role.VIEWER]))
    assert detail.json()["status"] == "completed"
    assert all(
        not row.device_id.startswith("other") for row in assignments(fleet_app, rollout["id"])
    )


def test_a_canary_that_rolls_back_aborts_the_rollout_and_nobody_else_gets_the_release(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    context = ctx(fleet_app)
    with Session(context.engine) as session:
        good = session.exec(select(ReleaseRecord).where(ReleaseRecord.version == 1)).one()
    devices = add_devices(context.engine, 6, running=good)
    rollout = start_rollout(client, tokens[Role.OPERATOR])
    assert rollout["last_good"] == "digits:1"
    fleet = fleet_of(context)

    plan_rollout(fleet, rollout["id"], now_s=NOW_S)
    report(fleet_app, rollout["id"], "rolled_back")
    plan_rollout(fleet, rollout["id"], now_s=NOW_S + 1)

    with Session(context.engine) as session:
        record = session.get(RolloutRecord, rollout["id"])
        assert record is not None
        assert record.status == "aborted"
        failed = [gate["name"] for gate in record.last_gates if not gate["passed"]]
        assert "rollback_rate" in failed
        kinds = [e.kind for e in session.exec(select(RolloutEventRecord)).all()]
    assert "rollout_aborted" in kinds
    assert all(desired_envelope(fleet_app, d) is None for d in devices[1:])


def test_abort_orders_updated_devices_back_to_the_last_good_release(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    context = ctx(fleet_app)
    with Session(context.engine) as session:
        good = session.exec(select(ReleaseRecord).where(ReleaseRecord.version == 1)).one()
    devices = add_devices(context.engine, 4, running=good)
    rollout = start_rollout(client, tokens[Role.OPERATOR], soak="1h")
    fleet = fleet_of(context)
    plan_rollout(fleet, rollout["id"], now_s=NOW_S)
    report(fleet_app, rollout["id"], "committed")

    answer = client.post(
        f"/api/v1/rollouts/{rollout['id']}/abort", headers=bearer(tokens[Role.OPERATOR])
    )
    assert answer.status_code == 200, answer.text
    plan_rollout(fleet, rollout["id"], now_s=NOW_S + 2)

    back = desired_deployment(fleet_app, devices[0])
    assert back.rollback
    assert back.sequence == 2
    assert (
        back.release_envelope().to_json_obj()
        == Envelope.from_bytes(good.envelope.encode()).to_json_obj()
    )
    assert assignments(fleet_app, rollout["id"])[0].rolled_back_by_rollout


def test_pause_stops_assignments_and_resume_goes_on(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    context = ctx(fleet_app)
    add_devices(context.engine, 10)
    rollout = start_rollout(client, tokens[Role.OPERATOR])
    fleet = fleet_of(context)
    operator = bearer(tokens[Role.OPERATOR])
    plan_rollout(fleet, rollout["id"], now_s=NOW_S)
    client.post(f"/api/v1/rollouts/{rollout['id']}/pause", headers=operator)
    report(fleet_app, rollout["id"], "committed")

    plan_rollout(fleet, rollout["id"], now_s=NOW_S + 1)
    paused = len(assignments(fleet_app, rollout["id"]))
    client.post(f"/api/v1/rollouts/{rollout['id']}/resume", headers=operator)
    plan_rollout(fleet, rollout["id"], now_s=NOW_S + 2)

    assert paused == 1
    assert len(assignments(fleet_app, rollout["id"])) == 5


def test_a_second_unfinished_rollout_of_the_same_model_is_refused(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    add_devices(ctx(fleet_app).engine, 2)
    start_rollout(client, tokens[Role.OPERATOR])
    answer = client.post(
        "/api/v1/rollouts",
        json={"release": "digits:1"},
        headers=bearer(tokens[Role.OPERATOR]),
    )
    assert answer.status_code == 409
    assert "still pending" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("waves", "50%,10%"), ("soak", "five minutes"), ("selector", "site=="), ("release", "x:9")],
)
def test_bad_rollout_specs_are_refused_with_a_reason(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str], field: str, value: str
) -> None:
    body = {"release": "digits:2", field: value}
    answer = client.post("/api/v1/rollouts", json=body, headers=bearer(tokens[Role.OPERATOR]))
    assert answer.status_code in (400, 404, 422)
    assert answer.json()["detail"]


@pytest.mark.parametrize(("field", "value"), [("waves", "50%,10%"), ("soak", "five minutes")])
def test_a_rollout_spec_the_core_refuses_is_a_400_naming_the_spec_error(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str], field: str, value: str
) -> None:
    body = {"release": "digits:2", field: value}
    answer = client.post("/api/v1/rollouts", json=body, headers=bearer(tokens[Role.OPERATOR]))

    assert answer.status_code == 400, answer.text
    assert answer.json()["kind"] == "RolloutSpecError"


def test_two_planners_at_once_assign_each_device_once(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    context = ctx(fleet_app)
    add_devices(context.engine, 20)
    rollout = start_rollout(client, tokens[Role.OPERATOR], waves="50%,100%")
    fleet = fleet_of(context)
    errors: list[BaseException] = []

    def planner() -> None:
        try:
            for step in range(5):
                plan_rollout(fleet, rollout["id"], now_s=NOW_S + step)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=planner) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    rows = assignments(fleet_app, rollout["id"])
    assert errors == []
    assert len(rows) == len({row.device_id for row in rows}) == 10
    sequences = [desired_deployment(fleet_app, row.device_id).sequence for row in rows]
    assert sequences == [1] * 10


def test_desired_states_are_due_for_publishing_until_marked(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    context = ctx(fleet_app)
    devices = add_devices(context.engine, 2)
    rollout = start_rollout(client, tokens[Role.OPERATOR], waves="100%")
    plan_rollout(fleet_of(context), rollout["id"], now_s=NOW_S)
    prefix = context.settings.topic_prefix

    with Session(context.engine) as session:
        due = unpublished_messages(session, prefix, limit=10)
        mark_published(session, due[:1])
        session.commit()
        still_due = unpublished_messages(session, prefix, limit=10)

    assert [m.device_id for m in due] == devices
    assert due[0].topic == f"{prefix}/{devices[0]}/desired"
    assert [m.device_id for m in still_due] == devices[1:]


def test_metrics_show_devices_rollouts_and_their_outcomes(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    add_devices(ctx(fleet_app).engine, 3)
    rollout = start_rollout(client, tokens[Role.OPERATOR])
    plan_rollout(fleet_of(ctx(fleet_app)), rollout["id"], now_s=NOW_S)

    text = client.get("/metrics", headers=bearer(tokens[Role.VIEWER])).text

    assert 'edgefleet_devices{online="true"} 3.0' in text
    assert 'edgefleet_rollouts{status="running"} 1.0' in text
    assert f'edgefleet_rollout_devices{{outcome="pending",rollout="{rollout["id"]}"}} 1.0' in text


def test_metrics_show_each_releases_health_pooled_over_the_fleet(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    devices = add_devices(ctx(fleet_app).engine, 2)
    now = datetime.now(UTC)
    release = ReleaseRef(model="digits", version=2, sha256="ab" * 32)
    write_telemetry(
        ctx(fleet_app).engine,
        [
            TelemetryBatch(
                device_id=device_id,
                seq=1,
                windows=[
                    TelemetryWindow(
                        model="digits",
                        release=release,
                        window_start=now - timedelta(seconds=30),
                        window_s=10.0,
                        requests=100,
                        errors=errors,
                        nonfinite_outputs=0,
                    )
                ],
            )
            for device_id, errors in zip(devices, (2, 8), strict=True)
        ],
    )

    text = client.get("/metrics", headers=bearer(tokens[Role.VIEWER])).text

    assert 'edgefleet_model_requests{model="digits",version="2"} 200.0' in text
    assert 'edgefleet_model_error_rate{model="digits",version="2"} 0.05' in text
    assert 'edgefleet_model_devices{model="digits",version="2"} 2.0' in text


def test_the_example_grafana_dashboard_reads_only_metrics_the_controller_exports(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    names = {name for expr in expressions for name in re.findall(r"edgefleet_[a-z0-9_]+", expr)}

    text = client.get("/metrics", headers=bearer(tokens[Role.VIEWER])).text

    declared = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    undeclared = [
        n for n in names if n not in declared and n.removesuffix("_total") not in declared
    ]
    assert names
    assert sorted(undeclared) == []


def test_a_decommissioned_device_gets_its_desired_state_cleared_on_the_broker(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    context = ctx(fleet_app)
    [device_id] = add_devices(context.engine, 1)
    rollout = start_rollout(client, tokens[Role.OPERATOR], waves="100%")
    plan_rollout(fleet_of(context), rollout["id"], now_s=NOW_S)
    prefix = context.settings.topic_prefix
    with Session(context.engine) as session:
        mark_published(session, unpublished_messages(session, prefix, limit=10))
        session.commit()

    answer = client.delete(f"/api/v1/devices/{device_id}", headers=bearer(tokens[Role.OPERATOR]))

    assert answer.status_code == 200, answer.text
    with Session(context.engine) as session:
        [message] = unpublished_messages(session, prefix, limit=10)
    assert (message.device_id, message.payload) == (device_id, b"")


def test_a_rollout_with_capture_orders_it_on_each_device_it_assigns(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    context = ctx(fleet_app)
    devices = add_devices(context.engine, 4)
    capture = {"below_confidence": 0.6, "per_hour": 5, "max_bytes": 1_000_000, "for_s": 7200}
    rollout = start_rollout(client, tokens[Role.OPERATOR], capture=capture)
    fleet = fleet_of(context)

    plan_rollout(fleet, rollout["id"], now_s=NOW_S)
    report(fleet_app, rollout["id"], "committed")
    plan_rollout(fleet, rollout["id"], now_s=NOW_S + 1)

    with Session(context.engine) as session:
        orders = session.exec(select(CaptureOrderRecord).order_by(col(CaptureOrderRecord.id))).all()
    assigned = [row.device_id for row in assignments(fleet_app, rollout["id"])]
    assert [order.device_id for order in orders] == assigned == devices[:2]
    assert {order.source for order in orders} == {f"rollout {rollout['id']}"}
    assert {(order.model_name, order.below_confidence, order.per_hour) for order in orders} == {
        ("digits", 0.6, 5)
    }
    until = orders[0].until.replace(tzinfo=UTC)
    assert until == datetime.fromtimestamp(NOW_S, UTC) + timedelta(hours=2)


def test_a_rollout_without_capture_orders_none_and_a_bad_capture_is_a_400(
    fleet_app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    context = ctx(fleet_app)
    add_devices(context.engine, 2)
    rollout = start_rollout(client, tokens[Role.OPERATOR])
    plan_rollout(fleet_of(context), rollout["id"], now_s=NOW_S)
    with Session(context.engine) as session:
        assert session.exec(select(CaptureOrderRecord)).all() == []
    for capture in ({"below_confidence": 2.0}, {"below_confidence": 0.5, "for_s": -1}):
        body = {"release": "digits:1", "capture": capture}
        answer = client.post("/api/v1/rollouts", json=body, headers=bearer(tokens[Role.OPERATOR]))
        assert answer.status_code in (400, 422), answer.text
