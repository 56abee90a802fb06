"""The devices API: lists and filters, details with history, labels, decommissioning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import col, select

from controller.db import session_scope
from controller.devices.inventory import DETAIL_EVENTS, DETAIL_TELEMETRY_WINDOWS
from controller.devices.tables import (
    DeviceEventRecord,
    DeviceModelRecord,
    DeviceRecord,
    telemetry_table,
)
from controller.registry.tables import ModelRecord, ModelVersion, ReleaseRecord
from controller.rollouts.tables import RolloutAssignmentRecord, RolloutRecord
from controller.tables import AuditEntry
from controller.tokens import Role
from protocol import Deployment, Envelope, verify_document
from tests.controller.conftest import bearer, ctx
from tests.controller.fleet_fixtures import add_release as add_signed_release

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def add_release(app: FastAPI, model: str, version: int) -> ReleaseRecord:
    """A release row; its envelope is never read by the devices API."""
    with session_scope(ctx(app).engine) as session:
        session.add(ModelRecord(name=model, next_version=version + 1))
        row = ModelVersion(
            model_name=model,
            version=version,
            origin="upload",
            status="registered",
            format="onnx",
            sha256="a" * 64,
            size_bytes=1,
            inputs=[],
            outputs=[],
            created_by="test",
        )
        session.add(row)
        session.flush()
        release = ReleaseRecord(
            model_version_id=row.id or 0,
            model_name=model,
            version=version,
            sha256="a" * 64,
            envelope="{}",
            created_by="test",
        )
        session.add(release)
    return release


def add_device(
    app: FastAPI,
    device_id: str,
    labels: dict[str, str],
    models: dict[str, dict[str, Any]] | None = None,
    **fields: Any,
) -> None:
    """A device row, and one ``device_models`` row per entry of ``models``."""
    with session_scope(ctx(app).engine) as session:
        session.add(DeviceRecord(id=device_id, labels=labels, mqtt_password_hash="-", **fields))
        session.flush()
        for model, values in (models or {}).items():
            session.add(DeviceModelRecord(device_id=device_id, model_name=model, **values))


def get(client: TestClient, tokens: dict[Role, str], path: str, **params: Any) -> Any:
    response = client.get(path, params=params, headers=bearer(tokens[Role.VIEWER]))
    assert response.status_code == 200, response.text
    return response.json()


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


@pytest.fixture
def fleet(app: FastAPI) -> ReleaseRecord:
    """Four devices: two in berlin (one offline), one in paris, one unlabeled."""
    release = add_release(app, "digits", 3)
    running = {"digits": {"phase": "idle", "active_version": 3}}
    add_device(app, "b-1", {"site": "berlin", "tier": "lab"}, running, online=True)
    add_device(app, "b-2", {"site": "berlin"}, running, online=False)
    add_device(
        app,
        "p-1",
        {"site": "paris"},
        {
            "digits": {
                "phase": "idle",
                "active_version": 2,
                "last_good_version": 2,
                "desired_release_id": release.id,
                "desired_rollout_id": "r1",
                "desired_sequence": 4,
                "desired_expires_at": T0 + timedelta(days=7),
                "desired_envelope": "{}",
            },
            "cats": {"phase": "idle", "active_version": 1},
        },
        online=True,
    )
    add_device(app, "x-1", {}, online=True)
    return release


def test_devices_are_listed_by_id_with_their_desired_release(
    client: TestClient, tokens: dict[Role, str], fleet: ReleaseRecord
) -> None:
    rows = get(client, tokens, "/api/v1/devices")
    assert ids(rows) == ["b-1", "b-2", "p-1", "x-1"]
    cats, digits = rows[2]["models"]
    assert (digits["model"], digits["active_version"], digits["desired_version"]) == (
        "digits",
        2,
        3,
    )
    assert (digits["desired_rollout_id"], digits["last_good_version"]) == ("r1", 2)
    assert (cats["model"], cats["active_version"], cats["desired_version"]) == ("cats", 1, None)
    assert [m["model"] for m in rows[0]["models"]] == ["digits"]
    assert rows[3]["models"] == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"selector": "site=berlin"}, ["b-1", "b-2"]),
        ({"selector": "site=berlin,tier!=lab"}, ["b-2"]),
        ({"selector": "!site"}, ["x-1"]),
        ({"selector": "site in (paris,berlin)", "online": "true"}, ["b-1", "p-1"]),
        ({"online": "false"}, ["b-2"]),
        ({"model": "digits", "version": 3}, ["b-1", "b-2"]),
        ({"model": "digits"}, ["b-1", "b-2", "p-1"]),
        ({"model": "cats"}, ["p-1"]),
        ({"model": "cats", "version": 3}, []),
        ({"limit": 2, "offset": 1}, ["b-2", "p-1"]),
        ({"selector": "site", "limit": 1, "offset": 1}, ["b-2"]),
    ],
)
def test_devices_list_filters(
    client: TestClient,
    tokens: dict[Role, str],
    fleet: ReleaseRecord,
    params: dict[str, Any],
    expected: list[str],
) -> None:
    assert ids(get(client, tokens, "/api/v1/devices", **params)) == expected


def test_bad_selector_is_a_400_with_the_parsers_message(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    response = client.get(
        "/api/v1/devices", params={"selector": "site=="}, headers=bearer(tokens[Role.VIEWER])
    )
    assert response.status_code == 400
    assert "expected a value" in response.json()["detail"]


def running_rollout(release: ReleaseRecord) -> RolloutRecord:
    """Rollout ``r1`` of ``release`` to site=paris, running."""
    return RolloutRecord(
        id="r1",
        release_id=release.id or 0,
        model_name="digits",
        selector="site=paris",
        policy={},
        state={},
        status="running",
        created_by="test",
    )


def test_device_detail_shows_desired_state_history_and_statistics(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], fleet: ReleaseRecord
) -> None:
    with session_scope(ctx(app).engine) as session:
        device = session.get(DeviceRecord, "p-1")
        assert device is not None
        device.desired_sequence = 4
        device.reported_state = {"phase": "idle"}
        session.add(device)
        session.add(running_rollout(fleet))
        session.flush()
        session.add(
            RolloutAssignmentRecord(
                rollout_id="r1",
                device_id="p-1",
                wave=0,
                assigned_at_s=1.0,
                deployment_sequence=4,
                outcome="rolled_back",
                reason="nonfinite_output",
            )
        )
        for seq in range(1, DETAIL_EVENTS + 6):
            session.add(
                DeviceEventRecord(
                    device_id="p-1", seq=seq, type="fetching", at=T0 + timedelta(seconds=seq)
                )
            )
    rows = [
        {
            "device_id": "p-1",
            "model_name": "digits",
            "version": 3,
            "window_start": T0 + timedelta(seconds=10 * i),
            "window_s": 10.0,
            "requests": i,
            "errors": 0,
            "nonfinite": 0,
            "p95_ms": 1.5,
        }
        for i in range(DETAIL_TELEMETRY_WINDOWS + 5)
    ]
    with ctx(app).engine.begin() as connection:
        connection.execute(telemetry_table.insert(), rows)

    detail = get(client, tokens, "/api/v1/devices/p-1")
    assert detail["id"] == "p-1"
    assert detail["reported_state"] == {"phase": "idle"}
    assert (detail["desired"]["sequence"], detail["desired"]["published_sequence"]) == (4, None)
    digits = detail["models"][1]
    assert (digits["model"], digits["desired_version"], digits["desired_sequence"]) == (
        "digits",
        3,
        4,
    )
    assert digits["desired_rollout_id"] == "r1"
    assert datetime.fromisoformat(digits["desired_expires_at"]) == T0 + timedelta(days=7)
    [assignment] = detail["assignments"]
    assert assignment["rollout_id"] == "r1"
    assert (assignment["model"], assignment["version"]) == ("digits", 3)
    assert (assignment["outcome"], assignment["reason"]) == ("rolled_back", "nonfinite_output")
    assert [e["seq"] for e in detail["events"]] == list(
        range(DETAIL_EVENTS + 5, 5, -1)
    )  # the last 50, newest first
    assert len(detail["telemetry"]) == DETAIL_TELEMETRY_WINDOWS
    assert detail["telemetry"][0]["requests"] == DETAIL_TELEMETRY_WINDOWS + 4  # newest first
    assert datetime.fromisoformat(detail["telemetry"][0]["window_start"]).tzinfo is not None


def test_unknown_device_is_a_404(client: TestClient, tokens: dict[Role, str]) -> None:
    response = client.get("/api/v1/devices/nope", headers=bearer(tokens[Role.VIEWER]))
    assert response.status_code == 404


def patch_labels(client: TestClient, tokens: dict[Role, str], device_id: str, body: Any) -> Any:
    return client.patch(
        f"/api/v1/devices/{device_id}/labels", json=body, headers=bearer(tokens[Role.OPERATOR])
    )


def test_labels_are_set_and_removed(
    client: TestClient, tokens: dict[Role, str], fleet: ReleaseRecord
) -> None:
    response = patch_labels(
        client, tokens, "b-1", {"set": {"site": "hamburg", "gpu": "yes"}, "remove": ["tier"]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["labels"] == {"site": "hamburg", "gpu": "yes"}
    assert ids(get(client, tokens, "/api/v1/devices", selector="site=hamburg,gpu")) == ["b-1"]


@pytest.mark.parametrize(
    "body",
    [
        {"set": {"site": "bad value"}},
        {"set": {"site": "x"}, "remove": ["site"]},
        {"add": {"site": "x"}},
    ],
)
def test_invalid_label_changes_are_refused(
    client: TestClient, tokens: dict[Role, str], fleet: ReleaseRecord, body: Any
) -> None:
    assert patch_labels(client, tokens, "b-1", body).status_code in (400, 422)
    assert get(client, tokens, "/api/v1/devices/b-1")["labels"] == {"site": "berlin", "tier": "lab"}


def test_decommissioned_device_is_hidden_and_its_token_revoked(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], tmp_path: Path
) -> None:
    operator = bearer(tokens[Role.OPERATOR])
    created = client.post("/api/v1/enrollment-tokens", json={}, headers=operator).json()
    device = client.post("/api/v1/enroll", json={"token": created["token"], "device_id": "d-1"})
    device_token = device.json()["controller_token"]
    # A device token downloads only what a release names; this one's artifact is "m:1".
    release = add_signed_release(ctx(app), "m", 1)
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes(b"m:1")
    stored = ctx(app).store.put(artifact)
    assert stored.sha256 == release.sha256
    url = f"/artifacts/sha256/{stored.sha256}"
    assert client.get(url, headers=bearer(device_token)).status_code == 200
    assert client.get("/api/v1/models", headers=bearer(device_token)).status_code == 403

    response = client.delete("/api/v1/devices/d-1", headers=operator)
    assert response.status_code == 200, response.text
    assert response.json()["decommissioned_at"] is not None
    assert client.delete("/api/v1/devices/d-1", headers=operator).status_code == 200
    assert client.get(url, headers=bearer(device_token)).status_code == 401
    assert ids(get(client, tokens, "/api/v1/devices")) == []
    listed = get(client, tokens, "/api/v1/devices", include_decommissioned="true")
    assert ids(listed) == ["d-1"]
    assert patch_labels(client, tokens, "d-1", {"set": {"a": "b"}}).status_code == 409
    assert client.delete("/api/v1/devices/nope", headers=operator).status_code == 404


def test_fleet_releases_count_devices_and_online_ones_per_version(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], fleet: ReleaseRecord
) -> None:
    add_device(app, "gone", {}, {"digits": {"active_version": 3}}, online=True)
    assert client.delete("/api/v1/devices/gone", headers=bearer(tokens[Role.OPERATOR])).is_success
    assert get(client, tokens, "/api/v1/fleet/releases") == [
        {"model": "cats", "version": 1, "devices": 1, "online": 1},
        {"model": "digits", "version": 3, "devices": 2, "online": 1},
        {"model": "digits", "version": 2, "devices": 1, "online": 1},
    ]


def remove(client: TestClient, tokens: dict[Role, str], device_id: str, model: str) -> Any:
    return client.post(
        f"/api/v1/devices/{device_id}/models/{model}/remove",
        headers=bearer(tokens[Role.OPERATOR]),
    )


def test_removing_a_model_signs_a_removal_for_that_model_only(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], fleet: ReleaseRecord
) -> None:
    response = remove(client, tokens, "p-1", "cats")

    assert response.status_code == 200, response.text
    cats, digits = response.json()["models"]
    assert (cats["desired_remove"], cats["desired_sequence"]) == (True, 1)
    assert (digits["desired_remove"], digits["desired_sequence"]) == (False, 4)
    with session_scope(ctx(app).engine) as session:
        row = session.get(DeviceModelRecord, ("p-1", "cats"))
        assert row is not None
        assert row.desired_envelope is not None
        deployment = verify_document(
            Envelope.from_bytes(row.desired_envelope.encode()),
            Deployment,
            ctx(app).signer.trust_root,
        )
        [entry] = session.exec(
            select(AuditEntry).where(col(AuditEntry.action).contains("/remove"))
        ).all()
    assert (deployment.model, deployment.remove, deployment.release) == ("cats", True, None)
    assert entry.details["model"] == "cats"


def test_removing_a_model_is_refused_while_its_rollout_deploys_it(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], fleet: ReleaseRecord
) -> None:
    with session_scope(ctx(app).engine) as session:
        session.add(running_rollout(fleet))

    assert remove(client, tokens, "p-1", "digits").status_code == 409
    assert remove(client, tokens, "p-1", "nope").status_code == 404
    assert remove(client, tokens, "nope", "digits").status_code == 404
    viewer = client.post(
        "/api/v1/devices/p-1/models/cats/remove", headers=bearer(tokens[Role.VIEWER])
    )
    assert viewer.status_code == 403
