"""Enrollment: one-time tokens traded once for a device identity, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import col, select

from controller.db import session_scope
from controller.devices.credentials import verify_mqtt_password
from controller.devices.enrollment import REFUSAL, create_enrollment_token, enroll_device
from controller.devices.tables import (
    DeviceEventRecord,
    DeviceModelRecord,
    DeviceRecord,
    EnrollmentToken,
)
from controller.errors import ControllerError, EnrollmentRefusedError
from controller.tables import ApiToken, AuditEntry
from controller.tokens import Role, authenticate
from protocol import DEVICE_ID_PATTERN, Envelope, verify_initial_trust_root
from tests.controller.conftest import bearer, ctx


def new_token(client: TestClient, tokens: dict[Role, str], **body: Any) -> dict[str, Any]:
    response = client.post(
        "/api/v1/enrollment-tokens", json=body, headers=bearer(tokens[Role.OPERATOR])
    )
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def enroll(client: TestClient, token: str, device_id: str | None = None) -> Any:
    body = {"token": token} if device_id is None else {"token": token, "device_id": device_id}
    return client.post("/api/v1/enroll", json=body)


def test_enrollment_gives_the_device_everything_it_needs(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    created = new_token(client, tokens, labels={"site": "berlin"}, device_id="pi-1")
    assert re.fullmatch(r"et_[0-9a-f]{16}_\S+", created["token"])
    response = enroll(client, created["token"])
    assert response.status_code == 201, response.text
    answer = response.json()
    settings = ctx(app).settings
    assert answer["device_id"] == answer["mqtt_username"] == "pi-1"
    assert answer["labels"] == {"site": "berlin"}
    assert answer["broker_url"] == settings.device_broker_url
    assert answer["controller_url"] == settings.device_controller_url
    assert answer["topic_prefix"] == settings.topic_prefix
    trust_root = verify_initial_trust_root(Envelope.from_json_obj(answer["trust_root"]))
    assert trust_root == ctx(app).signer.trust_root
    with session_scope(ctx(app).engine) as session:
        device = session.get(DeviceRecord, "pi-1")
        assert device is not None
        assert verify_mqtt_password(answer["mqtt_password"], device.mqtt_password_hash)
        assert answer["mqtt_password"] not in device.mqtt_password_hash
        principal = authenticate(session, answer["controller_token"])
        assert principal is not None
        assert principal.role is Role.DEVICE
        assert principal.token_id == device.api_token_id


def test_enrollment_token_is_stored_hashed(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    created = new_token(client, tokens)
    secret = created["token"].split("_", 2)[2]
    with session_scope(ctx(app).engine) as session:
        row = session.get(EnrollmentToken, created["id"])
        assert row is not None
        assert secret not in row.secret_sha256


def test_used_token_is_refused_the_second_time(client: TestClient, tokens: dict[Role, str]) -> None:
    token = new_token(client, tokens)["token"]
    assert enroll(client, token).status_code == 201
    again = enroll(client, token)
    assert again.status_code == 403
    assert again.json()["detail"] == REFUSAL


def test_expired_unknown_and_forged_tokens_get_the_same_refusal(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    expired = new_token(client, tokens)
    with session_scope(ctx(app).engine) as session:
        row = session.get(EnrollmentToken, expired["id"])
        assert row is not None
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
    forged = "_".join([*new_token(client, tokens)["token"].split("_")[:2], "x" * 43])
    answers = {
        enroll(client, token).json()["detail"]
        for token in (expired["token"], forged, "et_0123456789abcdef_secret", "garbage")
    }
    assert answers == {REFUSAL}


def test_refused_enrollment_creates_nothing(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    assert enroll(client, "et_0123456789abcdef_secret", "pi-9").status_code == 403
    with session_scope(ctx(app).engine) as session:
        assert session.get(DeviceRecord, "pi-9") is None


def test_device_id_comes_from_the_token_then_the_device_then_is_generated(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    fixed = new_token(client, tokens, device_id="fixed-1")["token"]
    assert enroll(client, fixed).json()["device_id"] == "fixed-1"
    proposed = new_token(client, tokens)["token"]
    assert enroll(client, proposed, "proposed-1").json()["device_id"] == "proposed-1"
    generated = enroll(client, new_token(client, tokens)["token"]).json()["device_id"]
    assert re.fullmatch(DEVICE_ID_PATTERN, generated)


def test_device_cannot_override_the_tokens_device_id(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    token = new_token(client, tokens, device_id="fixed-2")["token"]
    assert enroll(client, token, "other").status_code == 409
    assert enroll(client, token).status_code == 201


def test_enrolled_device_id_is_refused_and_the_token_stays_usable(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    assert enroll(client, new_token(client, tokens)["token"], "pi-2").status_code == 201
    token = new_token(client, tokens)["token"]
    refused = enroll(client, token, "pi-2")
    assert refused.status_code == 409
    assert "already enrolled" in refused.json()["detail"]
    assert enroll(client, token, "pi-3").status_code == 201


def test_token_for_an_enrolled_device_id_is_not_created(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    assert enroll(client, new_token(client, tokens)["token"], "pi-4").status_code == 201
    response = client.post(
        "/api/v1/enrollment-tokens",
        json={"device_id": "pi-4"},
        headers=bearer(tokens[Role.OPERATOR]),
    )
    assert response.status_code == 409


@pytest.mark.parametrize(
    "body",
    [
        {"labels": {"site": "bad value"}},
        {"labels": {"": "x"}},
        {"device_id": "no spaces"},
        {"device_id": "edgefleet-controller-1"},
        {"ttl_s": 0},
        {"ttl_s": 400 * 86400},
        {"unknown": 1},
    ],
)
def test_invalid_enrollment_token_requests_are_refused(
    client: TestClient, tokens: dict[Role, str], body: dict[str, Any]
) -> None:
    response = client.post(
        "/api/v1/enrollment-tokens", json=body, headers=bearer(tokens[Role.OPERATOR])
    )
    assert response.status_code in (400, 422), response.text


@pytest.mark.parametrize("device_id", ["edgefleet-controller", "Edgefleet-Controller-x", "a b"])
def test_device_cannot_propose_a_reserved_or_invalid_id(
    client: TestClient, tokens: dict[Role, str], device_id: str
) -> None:
    assert enroll(client, new_token(client, tokens)["token"], device_id).status_code == 400


def test_token_lifetime_defaults_to_the_setting(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    before = datetime.now(UTC)
    created = new_token(client, tokens)
    expires = datetime.fromisoformat(created["expires_at"])
    ttl_s = ctx(app).settings.enrollment_token_ttl_s
    assert before + timedelta(seconds=ttl_s) <= expires
    assert expires <= datetime.now(UTC) + timedelta(seconds=ttl_s)


def test_enrollment_is_audited_with_the_enrollment_token_as_actor(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    created = new_token(client, tokens, labels={"tier": "lab"})
    answer = enroll(client, created["token"], "pi-5").json()
    with session_scope(ctx(app).engine) as session:
        entries = session.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all()
    token_entry, enroll_entry = entries[-2], entries[-1]
    assert token_entry.action == "POST /api/v1/enrollment-tokens"
    assert token_entry.target == f"enrollment token {created['id']}"
    assert enroll_entry.action == "POST /api/v1/enroll"
    assert f"enrollment:{created['id']}" in enroll_entry.actor
    assert enroll_entry.target == "device pi-5"
    for secret in (answer["mqtt_password"], answer["controller_token"], created["token"]):
        assert secret not in str(enroll_entry.details) + str(token_entry.details)


def test_decommissioned_device_can_enroll_again_with_new_credentials(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    first = enroll(client, new_token(client, tokens, labels={"a": "1"})["token"], "pi-6").json()
    with session_scope(ctx(app).engine) as session:
        device = session.get(DeviceRecord, "pi-6")
        assert device is not None
        device.next_deployment_sequence = 7
        session.add(device)
        session.add(DeviceModelRecord(device_id="pi-6", model_name="digits", active_version=1))
        session.add(
            DeviceEventRecord(device_id="pi-6", seq=1, type="committed", at=device.enrolled_at)
        )
    assert client.delete("/api/v1/devices/pi-6", headers=bearer(tokens[Role.OPERATOR])).is_success
    second = enroll(client, new_token(client, tokens, labels={"b": "2"})["token"], "pi-6")
    assert second.status_code == 201, second.text
    with session_scope(ctx(app).engine) as session:
        device = session.get(DeviceRecord, "pi-6")
        assert device is not None
        assert device.decommissioned_at is None
        assert device.labels == {"b": "2"}
        assert device.next_deployment_sequence == 7  # sequences only grow
        assert session.exec(select(DeviceModelRecord)).all() == []
        assert not verify_mqtt_password(first["mqtt_password"], device.mqtt_password_hash)
        assert authenticate(session, first["controller_token"]) is None
        events = session.exec(
            select(DeviceEventRecord).where(DeviceEventRecord.device_id == "pi-6")
        )
        assert events.all() == []


def test_concurrent_enrollments_with_one_token_enroll_one_device(app: FastAPI) -> None:
    engine, settings = ctx(app).engine, ctx(app).settings
    with session_scope(engine) as session:
        token, _row = create_enrollment_token(
            session, labels={}, device_id=None, ttl_s=60, actor="test"
        )
    attempts = 8
    barrier = threading.Barrier(attempts)
    outcomes: list[str] = []

    def attempt(index: int) -> None:
        barrier.wait()
        try:
            with session_scope(engine) as session:
                enroll_device(
                    session,
                    token=token,
                    device_id=f"race-{index}",
                    settings=settings,
                    trust_root_envelope=ctx(app).signer.trust_root_envelope,
                )
            outcomes.append("enrolled")
        except EnrollmentRefusedError:
            outcomes.append("refused")
        except ControllerError as exc:  # pragma: no cover - shown if it happens
            outcomes.append(f"error: {exc}")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["enrolled"] + ["refused"] * (attempts - 1)
    with session_scope(engine) as session:
        devices = session.exec(select(DeviceRecord)).all()
        device_tokens = session.exec(select(ApiToken).where(ApiToken.role == "device")).all()
    assert len(devices) == 1
    assert [t.id for t in device_tokens] == [devices[0].api_token_id]
