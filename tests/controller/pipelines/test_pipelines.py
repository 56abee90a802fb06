"""Channels and pipelines on a real controller (SQLite and PostgreSQL), real converter
jobs and the real rollout planner; devices come in the fleet end-to-end tests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import select

from controller.db import session_scope
from controller.pipelines.tables import ChannelRecord
from controller.pipelines.worker import DeliveryWorker
from controller.rollouts.engine import FleetContext, active_rollout_ids, plan_rollout
from controller.rollouts.tables import RolloutEventRecord, RolloutRecord
from controller.tables import AuditEntry
from controller.tokens import Role
from simulator.demo_models import build_digits_model, build_mislabeled_digits_model
from tests.controller.conftest import bearer, ctx

Models = dict[str, Path]
# No device matches: the fleet end-to-end tests run real agents. Here a rollout's end is
# recorded as the planner records it (``finish_rollout``), to test what the pipeline does.
FAST_ROLLOUT = {"waves": "100%", "soak": "0s", "selector": "site=nowhere"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    directory = tmp_path_factory.mktemp("models")
    digits, validation = build_digits_model(directory)
    return {
        "digits": digits,
        "validation": validation,
        "mislabeled": build_mislabeled_digits_model(directory),
    }


def create_channel(client: TestClient, token: str, name: str, **fields: Any) -> dict[str, Any]:
    body = {"name": name, "rollout": FAST_ROLLOUT, **fields}
    response = client.post("/api/v1/channels", headers=bearer(token), json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def push(
    client: TestClient, token: str, model: Path, validation: Path, channel: str
) -> tuple[int, str]:
    files = {
        "model": (model.name, model.read_bytes()),
        "validation": (validation.name, validation.read_bytes()),
    }
    response = client.post(
        "/api/v1/models/digits/versions",
        headers=bearer(token),
        files=files,
        data={"channel": channel, "allow_signature_change": "true"},
    )
    assert response.status_code == 201, response.text
    return int(response.json()["version"]), response.headers["X-Edgefleet-Pipeline"]


def work(app: FastAPI) -> None:
    """What the delivery worker and the rollout loop do, until nothing more happens."""
    worker = DeliveryWorker(ctx(app))
    context = ctx(app)
    fleet = FleetContext(settings=context.settings, engine=context.engine, signer=context.signer)
    for _ in range(10):
        asyncio.run(worker.advance_pipelines())
        ran = asyncio.run(worker.run_jobs())
        for rollout_id in active_rollout_ids(context.engine):
            plan_rollout(fleet, rollout_id, now_s=time.time())
        if not ran:
            break
    asyncio.run(worker.advance_pipelines())


def finish_rollout(app: FastAPI, rollout_id: str, status: str) -> None:
    with session_scope(ctx(app).engine) as session:
        record = session.get(RolloutRecord, rollout_id)
        assert record is not None
        record.status = status
        session.add(record)


def pipeline(client: TestClient, token: str, pipeline_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/pipelines/{pipeline_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    return dict(response.json())


def events(app: FastAPI, kind: str) -> list[dict[str, Any]]:
    with session_scope(ctx(app).engine) as session:
        rows = session.exec(select(RolloutEventRecord).where(RolloutEventRecord.kind == kind))
        return [row.details for row in rows.all()]


def test_a_pushed_version_ships_through_its_channel_and_a_worse_one_stops_at_the_gate(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    operator = tokens[Role.OPERATOR]
    create_channel(client, operator, "cameras", variants=["int8-dynamic"])

    _, first = push(client, operator, models["digits"], models["validation"], "cameras")
    work(app)

    shipped = pipeline(client, operator, first)
    assert shipped["status"] == "rolling_out", shipped["history"]
    rollout = client.get(f"/api/v1/rollouts/{shipped['rollout_id']}", headers=bearer(operator))
    assert rollout.json()["release"] == "digits:2"  # the int8 variant, not the float model
    finish_rollout(app, shipped["rollout_id"], "completed")
    work(app)
    shipped = pipeline(client, operator, first)
    assert shipped["status"] == "completed", shipped["history"]
    assert shipped["release_version"] == 2
    steps = [(entry["step"], entry["status"]) for entry in shipped["history"]]
    assert ("variants", "ok") in steps
    assert ("release", "ok") in steps
    assert "nothing to compare with" in str(shipped["history"])
    release = client.get("/api/v1/models/digits/versions/2/release", headers=bearer(operator))
    assert release.status_code == 200

    _, second = push(client, operator, models["mislabeled"], models["validation"], "cameras")
    work(app)

    stopped = pipeline(client, operator, second)
    assert stopped["status"] == "stopped", stopped
    assert stopped["reason"].startswith("quality gate against digits:2: accuracy drops")
    assert stopped["rollout_id"] is None
    # Nothing of the worse model was released.
    released = client.get("/api/v1/releases", headers=bearer(operator)).json()
    assert [(r["model_name"], r["version"]) for r in released] == [("digits", 2)]
    assert [e["pipeline"] for e in events(app, "pipeline_stopped")] == [second]
    channel = client.get("/api/v1/channels/cameras", headers=bearer(operator)).json()
    assert [p["id"] for p in channel["pipelines"]] == [second, first]


def test_with_approval_required_nothing_ships_until_an_operator_approves(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    operator, viewer = tokens[Role.OPERATOR], tokens[Role.VIEWER]
    create_channel(client, operator, "gated", approval="required")
    _, pipeline_id = push(client, operator, models["digits"], models["validation"], "gated")
    work(app)

    waiting = pipeline(client, operator, pipeline_id)
    assert waiting["status"] == "waiting_approval", waiting
    assert client.get("/api/v1/releases", headers=bearer(operator)).json() == []
    assert [e["pipeline"] for e in events(app, "release_waiting_approval")] == [pipeline_id]
    refused = client.post("/api/v1/channels/gated/approve", headers=bearer(viewer))
    assert refused.status_code == 403

    approved = client.post("/api/v1/channels/gated/approve", headers=bearer(operator))
    assert approved.status_code == 200, approved.text
    work(app)

    done = pipeline(client, operator, pipeline_id)
    assert done["status"] == "rolling_out", [h["detail"] for h in done["history"]][5:]
    assert done["approved_by"] == "test-operator"
    assert client.get("/api/v1/releases", headers=bearer(operator)).json() != []
    with session_scope(ctx(app).engine) as session:
        actions = [row.action for row in session.exec(select(AuditEntry)).all()]
    assert any("approve" in action for action in actions), actions
    again = client.post("/api/v1/channels/gated/approve", headers=bearer(operator))
    assert again.status_code == 409


def test_a_newer_version_supersedes_one_waiting_for_approval(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    operator = tokens[Role.OPERATOR]
    create_channel(client, operator, "gated", approval="required")
    _, older = push(client, operator, models["digits"], models["validation"], "gated")
    work(app)
    _, newer = push(client, operator, models["digits"], models["validation"], "gated")
    work(app)

    assert pipeline(client, operator, older)["status"] == "superseded"
    assert pipeline(client, operator, older)["reason"] == "superseded by digits:2"
    assert pipeline(client, operator, newer)["status"] == "waiting_approval"


def test_a_paused_channel_takes_no_step_until_resumed(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    operator = tokens[Role.OPERATOR]
    create_channel(client, operator, "cameras")
    assert client.post("/api/v1/channels/cameras/pause", headers=bearer(operator)).json()["paused"]
    _, pipeline_id = push(client, operator, models["digits"], models["validation"], "cameras")
    work(app)
    assert pipeline(client, operator, pipeline_id)["status"] == "queued"

    client.post("/api/v1/channels/cameras/resume", headers=bearer(operator))
    work(app)
    assert pipeline(client, operator, pipeline_id)["status"] == "rolling_out"


def test_pushing_into_an_unknown_channel_is_refused_and_records_nothing(
    client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    operator = tokens[Role.OPERATOR]
    files = {"model": ("digits.onnx", models["digits"].read_bytes())}
    response = client.post(
        "/api/v1/models/digits/versions",
        headers=bearer(operator),
        files=files,
        data={"channel": "nowhere"},
    )
    assert response.status_code == 404
    assert "no channel 'nowhere'" in response.json()["detail"]
    assert client.get("/api/v1/models", headers=bearer(operator)).json() == []


def test_a_bad_channel_policy_is_refused_with_its_reason(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    operator = tokens[Role.OPERATOR]
    body = {"name": "broken", "rollout": {"waves": "50%,10%"}}
    response = client.post("/api/v1/channels", headers=bearer(operator), json=body)
    assert response.status_code == 400, response.text
    bad_selector = {"name": "bad", "rollout": {"selector": "a b c"}}
    refused = client.post("/api/v1/channels", headers=bearer(operator), json=bad_selector)
    assert refused.status_code == 400, refused.text
    twice = {"name": "twice"}
    assert client.post("/api/v1/channels", headers=bearer(operator), json=twice).status_code == 201
    assert client.post("/api/v1/channels", headers=bearer(operator), json=twice).status_code == 409


def test_a_rollout_superseded_after_it_completed_ends_its_pipeline_completed(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    # A newer rollout of the model supersedes only a completed one: the version shipped,
    # and the channel's next version is gated against it.
    operator = tokens[Role.OPERATOR]
    create_channel(client, operator, "cameras")
    _, first = push(client, operator, models["digits"], models["validation"], "cameras")
    work(app)
    finish_rollout(app, pipeline(client, operator, first)["rollout_id"], "superseded")
    work(app)

    shipped = pipeline(client, operator, first)
    assert shipped["status"] == "completed", shipped["history"]
    _, second = push(client, operator, models["mislabeled"], models["validation"], "cameras")
    work(app)
    assert pipeline(client, operator, second)["reason"].startswith("quality gate against digits:1")


def test_a_channel_whose_step_is_refused_stops_its_pipeline_and_holds_no_other_channel(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], models: Models
) -> None:
    # A selector the rollout refuses (written before channels checked them) once froze
    # its channel and every channel sorted after it, retrying every 2 s for ever.
    operator = tokens[Role.OPERATOR]
    create_channel(client, operator, "a-broken")
    create_channel(client, operator, "b-fine")
    with session_scope(ctx(app).engine) as session:
        broken = session.get(ChannelRecord, "a-broken")
        assert broken is not None
        broken.selector = "a b c"
        session.add(broken)
    _, stuck = push(client, operator, models["digits"], models["validation"], "a-broken")
    _, fine = push(client, operator, models["digits"], models["validation"], "b-fine")
    work(app)

    stopped = pipeline(client, operator, stuck)
    assert stopped["status"] == "stopped", stopped["history"]
    assert "SelectorError: expected" in stopped["reason"]
    assert pipeline(client, operator, fine)["status"] == "rolling_out"
