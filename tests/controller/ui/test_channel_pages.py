"""The channel pages: each version's path through a channel, and the approve button
(operators only, CSRF-checked, audited like the API's approve)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import col, select

from controller.db import session_scope
from controller.pipelines.runs import create_channel
from controller.pipelines.tables import PipelineRecord
from controller.rollouts.core import parse_waves
from controller.rollouts.core.waves import RolloutPolicy
from controller.tables import AuditEntry
from controller.tokens import Role
from protocol import ProbationPolicy
from tests.controller.conftest import ctx

from .conftest import EVIL, csrf_of, log_in


def waiting_pipeline(app: FastAPI) -> str:
    with session_scope(ctx(app).engine) as session:
        create_channel(
            session,
            name="lab",
            selector="site=lab",
            variants=["int8-dynamic"],
            policy=RolloutPolicy(waves=parse_waves("100%")),
            probation=ProbationPolicy(),
            capture=None,
            approval_required=True,
            actor="test",
        )
        pipeline = PipelineRecord(
            id="pl-0123456789ab",
            channel="lab",
            model_name="digits",
            source_version=1,
            release_version=2,
            status="waiting_approval",
            step="approval",
            created_by="test",
            history=[{"step": "approval", "status": "waiting", "at": "2026-12-04T12:00:00",
                      "detail": f"digits:2 waits {EVIL}"}],
        )  # fmt: skip
        session.add(pipeline)
    return "pl-0123456789ab"


def test_an_operator_approves_a_waiting_release_on_the_channel_page(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    pipeline_id = waiting_pipeline(app)
    log_in(client, tokens[Role.OPERATOR])

    listing = client.get("/ui/channels")
    assert listing.status_code == 200
    assert "waiting_approval" in listing.text
    page = client.get("/ui/channels/lab")
    assert page.status_code == 200
    assert EVIL not in page.text  # a detail is escaped like every other value
    assert f"/ui/pipelines/{pipeline_id}/approve" in page.text

    forged = client.post(f"/ui/pipelines/{pipeline_id}/approve", data={"csrf": "forged"})
    assert forged.status_code == 403
    pressed = client.post(
        f"/ui/pipelines/{pipeline_id}/approve",
        data={"csrf": csrf_of(page.text)},
        follow_redirects=False,
    )
    assert pressed.status_code == 303
    assert pressed.headers["location"] == f"/ui/channels/lab?approved={pipeline_id}"
    with session_scope(ctx(app).engine) as session:
        pipeline = session.get(PipelineRecord, pipeline_id)
        assert pipeline is not None
        assert (pipeline.status, pipeline.approved_by) == ("running", "test-operator")
        entry = session.exec(select(AuditEntry).order_by(col(AuditEntry.seq).desc())).first()
        assert entry is not None
        assert entry.target == pipeline_id
    again = client.post(f"/ui/pipelines/{pipeline_id}/approve", data={"csrf": csrf_of(page.text)})
    assert again.status_code == 409


def test_a_viewer_sees_the_channel_but_no_approve_button_and_cannot_post(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    pipeline_id = waiting_pipeline(app)
    log_in(client, tokens[Role.VIEWER])

    page = client.get("/ui/channels/lab")
    assert page.status_code == 200
    assert "approve" not in page.text.lower().replace("approval", "")
    assert 'method="post"' not in page.text
    refused = client.post(f"/ui/pipelines/{pipeline_id}/approve", data={"csrf": "any"})
    assert refused.status_code == 403
    assert client.get("/ui/channels/nowhere").status_code == 404
