"""The samples API over HTTP (the app's test client), on SQLite and PostgreSQL: uploads
by devices, their attacks, listing and download, and capture orders as signed commands."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from agent.update.trust import verify_command
from agent.update.trust_state import TrustState
from controller.db import session_scope
from controller.devices.enrollment import create_enrollment_token, enroll_device
from controller.devices.tables import DeviceModelRecord
from controller.samples.capture import active_captures, due_capture_orders, order_capture
from controller.samples.tables import CaptureOrderRecord, SampleRecord
from controller.settings import Settings, load_settings
from controller.tokens import Role
from protocol import CapturePolicy, Envelope, SampleMeta
from tensors.samples import read_sample, write_sample
from tests.controller.conftest import bearer, ctx

MODEL = "digits"


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # Small limits, so the quota and the size cap are reached with small samples.
    return load_settings(
        environ={},
        overrides={
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "max_sample_bytes": 64 * 1024,
            "sample_quota_per_device": 3,
        },
    )


def _enroll(app: FastAPI, device_id: str, labels: dict[str, str] | None = None) -> str:
    with session_scope(ctx(app).engine) as session:
        token, _row = create_enrollment_token(
            session, labels=labels or {}, device_id=device_id, ttl_s=60, actor="test"
        )
    with session_scope(ctx(app).engine) as session:
        enrollment = enroll_device(
            session,
            token=token,
            device_id=None,
            settings=ctx(app).settings,
            trust_root_envelope=ctx(app).signer.trust_root_envelope,
        )
        session.add(DeviceModelRecord(device_id=device_id, model_name=MODEL, active_version=1))
    return enrollment.controller_token


@pytest.fixture
def enrolled(app: FastAPI) -> dict[str, str]:
    """Two devices running the model, and their API tokens; capture never ordered."""
    return {"cam-1": _enroll(app, "cam-1", {"site": "berlin"}), "cam-2": _enroll(app, "cam-2")}


@pytest.fixture
def devices(app: FastAPI, enrolled: dict[str, str]) -> dict[str, str]:
    """The two devices, with capture of the model ordered for both."""
    now = datetime.now(UTC)
    with session_scope(ctx(app).engine) as session:
        order_capture(
            session,
            ctx(app).signer,
            enrolled,
            model=MODEL,
            below_confidence=0.5,
            per_hour=20,
            max_bytes=1_000_000,
            until=now + timedelta(hours=1),
            source="test",
            now=now,
        )
    return enrolled


def _sample(device_id: str = "cam-1", seed: int = 0, shape: tuple[int, ...] = (1, 4)) -> bytes:
    rng = np.random.default_rng(seed)
    meta = SampleMeta(
        device_id=device_id,
        model=MODEL,
        release_version=1,
        captured_at=datetime(2026, 12, 4, 9, 0, tzinfo=UTC) + timedelta(seconds=seed),
        reason="low_confidence",
        confidence=0.3,
        inputs=["x"],
        outputs=["probs"],
    )
    inputs = {"x": rng.normal(size=shape).astype(np.float32)}
    return write_sample(meta, inputs, {"probs": np.full((shape[0], 3), 1 / 3, np.float32)})


def _put(client: TestClient, token: str, data: bytes, sha256: str | None = None) -> Any:
    name = sha256 or hashlib.sha256(data).hexdigest()
    return client.put(
        f"/api/v1/device/samples/{name}",
        content=data,
        headers=bearer(token) | {"Content-Type": "application/octet-stream"},
    )


def _stored(app: FastAPI) -> list[SampleRecord]:
    with session_scope(ctx(app).engine) as session:
        return list(session.exec(select(SampleRecord)).all())


def _files(app: FastAPI) -> list[Path]:
    root = ctx(app).settings.samples_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_upload_is_stored_once_and_downloads_as_sent(
    app: FastAPI, client: TestClient, devices: dict[str, str], tokens: dict[Role, str]
) -> None:
    data = _sample()
    first = _put(client, devices["cam-1"], data)
    assert first.status_code == 201, first.text
    again = _put(client, devices["cam-1"], data)
    assert again.status_code == 200
    assert len(_stored(app)) == 1
    assert len(_files(app)) == 1
    listed = client.get(f"/api/v1/samples?model={MODEL}", headers=bearer(tokens[Role.VIEWER]))
    assert listed.status_code == 200
    [row] = listed.json()
    assert (row["device_id"], row["release_version"], row["reason"]) == (
        "cam-1",
        1,
        "low_confidence",
    )
    download = client.get(row["url"], headers=bearer(tokens[Role.VIEWER]))
    assert download.status_code == 200
    assert download.content == data


def test_oversize_upload_gets_413_and_nothing_is_stored(
    app: FastAPI, client: TestClient, devices: dict[str, str]
) -> None:
    data = _sample(shape=(1, 64 * 1024))  # 256 KiB of inputs, over the 64 KiB cap
    answer = _put(client, devices["cam-1"], data)
    assert answer.status_code == 413
    assert _stored(app) == []
    assert _files(app) == []


def test_device_uploading_for_another_device_is_refused(
    app: FastAPI, client: TestClient, devices: dict[str, str]
) -> None:
    answer = _put(client, devices["cam-1"], _sample(device_id="cam-2"))
    assert answer.status_code == 403
    assert "cam-2" in answer.json()["detail"]
    assert _stored(app) == []
    assert _files(app) == []


@pytest.mark.parametrize(
    "data",
    [b"definitely not an npz", b"PK\x03\x04garbage", b""],
    ids=["text", "broken-zip", "empty"],
)
def test_malformed_sample_gets_400_and_nothing_is_stored(
    app: FastAPI, client: TestClient, devices: dict[str, str], data: bytes
) -> None:
    answer = _put(client, devices["cam-1"], data)
    assert answer.status_code == 400
    assert _stored(app) == []
    assert _files(app) == []


def test_pickled_npz_gets_400(app: FastAPI, client: TestClient, devices: dict[str, str]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{"input:x": np.array([object()], dtype=object)})
    assert _put(client, devices["cam-1"], buffer.getvalue()).status_code == 400
    assert _stored(app) == []


def test_body_that_is_not_its_hash_gets_400(
    app: FastAPI, client: TestClient, devices: dict[str, str]
) -> None:
    answer = _put(client, devices["cam-1"], _sample(), sha256="0" * 64)
    assert answer.status_code == 400
    assert _stored(app) == []


def test_device_over_its_quota_gets_507_and_nothing_more_is_stored(
    app: FastAPI, client: TestClient, devices: dict[str, str]
) -> None:
    for seed in range(3):
        assert _put(client, devices["cam-1"], _sample(seed=seed)).status_code == 201
    answer = _put(client, devices["cam-1"], _sample(seed=3))
    assert answer.status_code == 507
    assert len(_stored(app)) == 3
    # Another device has its own quota.
    assert _put(client, devices["cam-2"], _sample("cam-2", seed=3)).status_code == 201


def test_only_device_tokens_upload_and_only_viewers_read(
    client: TestClient, devices: dict[str, str], tokens: dict[Role, str]
) -> None:
    data = _sample()
    assert _put(client, tokens[Role.OPERATOR], data).status_code == 403
    assert _put(client, "not-a-token", data).status_code == 401
    assert client.get("/api/v1/samples", headers=bearer(devices["cam-1"])).status_code == 403


def test_capture_order_is_a_signed_command_for_each_device(
    app: FastAPI, client: TestClient, enrolled: dict[str, str], tokens: dict[Role, str]
) -> None:
    body = {
        "model": MODEL,
        "selector": "site=berlin",
        "below_confidence": 0.4,
        "rare_input_share": 0.3,
        "for_s": 3600,
    }
    answer = client.post("/api/v1/capture", json=body, headers=bearer(tokens[Role.OPERATOR]))
    assert answer.status_code == 201, answer.text
    assert answer.json()["devices"] == ["cam-1"]
    with session_scope(ctx(app).engine) as session:
        [order] = session.exec(select(CaptureOrderRecord)).all()
        [active] = active_captures(session, now=datetime.now(UTC), model=MODEL)
    assert active.device_id == "cam-1"
    assert active.below_confidence == 0.4
    trust = TrustState.initial(ctx(app).signer.trust_root_envelope.to_bytes())
    verified = verify_command(
        order.envelope.encode(), trust, device_id="cam-1", now=datetime.now(UTC)
    )
    assert verified.command.action == "capture"
    policy = CapturePolicy.from_args(verified.command.args)
    assert (policy.model, policy.below_confidence, policy.off) == (MODEL, 0.4, False)
    assert policy.rare_input_share == 0.3
    status = client.get("/api/v1/capture", headers=bearer(tokens[Role.VIEWER])).json()
    assert [(s["device_id"], s["model"]) for s in status] == [("cam-1", MODEL)]
    off = client.post(
        "/api/v1/capture", json=body | {"off": True}, headers=bearer(tokens[Role.OPERATOR])
    )
    assert off.status_code == 201
    assert client.get("/api/v1/capture", headers=bearer(tokens[Role.VIEWER])).json() == []


def test_capture_orders_wait_for_their_device_to_be_online(
    app: FastAPI, client: TestClient, enrolled: dict[str, str], tokens: dict[Role, str]
) -> None:
    body = {"model": MODEL, "for_s": 3600}
    client.post("/api/v1/capture", json=body, headers=bearer(tokens[Role.OPERATOR]))
    with session_scope(ctx(app).engine) as session:
        assert due_capture_orders(session, "edgefleet/v1", limit=10) == []
    from controller.devices.tables import DeviceRecord

    with session_scope(ctx(app).engine) as session:
        device = session.get(DeviceRecord, "cam-2")
        assert device is not None
        device.online = True
        session.add(device)
    with session_scope(ctx(app).engine) as session:
        [due] = due_capture_orders(session, "edgefleet/v1", limit=10)
    assert due.topic == "edgefleet/v1/cam-2/cmd"
    assert Envelope.from_bytes(due.payload).payload_type.endswith("command+json")


def test_stored_sample_reads_back_as_a_sample(
    app: FastAPI, client: TestClient, devices: dict[str, str]
) -> None:
    data = _sample()
    _put(client, devices["cam-1"], data)
    [path] = _files(app)
    assert read_sample(path.read_bytes(), max_bytes=1 << 20).meta.device_id == "cam-1"


def test_deleting_samples_frees_the_quota_and_the_files(
    app: FastAPI, client: TestClient, devices: dict[str, str], tokens: dict[Role, str]
) -> None:
    for seed in range(3):
        assert _put(client, devices["cam-1"], _sample(seed=seed)).status_code == 201
    assert _put(client, devices["cam-1"], _sample(seed=3)).status_code == 507
    operator = bearer(tokens[Role.OPERATOR])
    # Captured before 09:00:02: the first two (seeds 0 and 1).
    answer = client.delete(
        "/api/v1/samples",
        params={"model": MODEL, "before": "2026-12-04T09:00:02Z"},
        headers=operator,
    )
    assert answer.json() == {"deleted": 2}
    assert len(_stored(app)) == 1
    assert len(_files(app)) == 1
    assert _put(client, devices["cam-1"], _sample(seed=3)).status_code == 201
    viewer = bearer(tokens[Role.VIEWER])
    assert (
        client.delete("/api/v1/samples", params={"model": MODEL}, headers=viewer).status_code == 403
    )


def test_sample_of_a_model_never_ordered_is_refused(
    app: FastAPI, client: TestClient, enrolled: dict[str, str]
) -> None:
    answer = _put(client, enrolled["cam-1"], _sample())
    assert answer.status_code == 403
    assert "never turned on" in answer.json()["detail"]
    assert _stored(app) == []
    assert _files(app) == []


def test_an_offset_beyond_a_database_integer_is_refused_not_a_500(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    # Found by the API fuzzer: SQLite cannot bind 2**63, and the list answered 500.
    answer = client.get(
        "/api/v1/samples?offset=9223372036854775808", headers=bearer(tokens[Role.VIEWER])
    )
    assert answer.status_code == 422
