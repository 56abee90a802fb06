"""The rollout buttons: operators pause, resume and abort with a CSRF-checked form, queued
and audited as the API does it; viewers see no buttons and are refused when they post."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import col, select

from controller.db import session_scope
from controller.rollouts.tables import RolloutCommandRecord, RolloutRecord
from controller.tables import AuditEntry
from controller.tokens import Role
from tests.controller.conftest import bearer, ctx

from .conftest import DashboardFleet, csrf_of, log_in


@pytest.fixture
def browser(app: FastAPI) -> Iterator[TestClient]:
    """A second browser, with a cookie jar of its own."""
    with TestClient(app, raise_server_exceptions=False) as second:
        yield second


def commands(app: FastAPI, rollout_id: str) -> list[tuple[str, str]]:
    with session_scope(ctx(app).engine) as session:
        rows = session.exec(
            select(RolloutCommandRecord)
            .where(RolloutCommandRecord.rollout_id == rollout_id)
            .order_by(col(RolloutCommandRecord.id))
        ).all()
        return [(row.kind, row.actor) for row in rows]


def audit_tail(app: FastAPI) -> AuditEntry:
    with session_scope(ctx(app).engine) as session:
        entry = session.exec(select(AuditEntry).order_by(col(AuditEntry.seq).desc())).first()
    assert entry is not None
    return entry


def rollout_page(client: TestClient, fleet: DashboardFleet) -> str:
    response = client.get(f"/ui/rollouts/{fleet.rollout_id}")
    assert response.status_code == 200, response.text
    return response.text


def press(client: TestClient, fleet: DashboardFleet, kind: str, csrf: str) -> httpx.Response:
    return client.post(
        f"/ui/rollouts/{fleet.rollout_id}/{kind}", data={"csrf": csrf}, follow_redirects=False
    )


def test_an_operator_pauses_by_form_and_it_is_queued_and_audited_as_by_the_api(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], dashboard_fleet: DashboardFleet
) -> None:
    log_in(client, tokens[Role.OPERATOR])
    csrf = csrf_of(rollout_page(client, dashboard_fleet))

    answer = press(client, dashboard_fleet, "pause", csrf)

    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location == f"/ui/rollouts/{dashboard_fleet.rollout_id}?queued=pause"
    assert "Pause queued" in client.get(location).text
    assert commands(app, dashboard_fleet.rollout_id) == [("pause", "test-operator")]
    by_form = audit_tail(app)
    client.post(
        f"/api/v1/rollouts/{dashboard_fleet.rollout_id}/pause",
        headers=bearer(tokens[Role.OPERATOR]),
    )
    by_api = audit_tail(app)
    assert (by_form.actor, by_form.role, by_form.target, by_form.details) == (
        by_api.actor,
        by_api.role,
        by_api.target,
        by_api.details,
    )
    assert by_form.details == {"command": "pause"}
    assert by_form.action == "POST /ui/rollouts/{rollout_id}/{kind}"


def test_an_operator_sees_pause_and_abort_and_resume_once_paused(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], dashboard_fleet: DashboardFleet
) -> None:
    log_in(client, tokens[Role.OPERATOR])
    running = rollout_page(client, dashboard_fleet)
    with session_scope(ctx(app).engine) as session:
        record = session.get(RolloutRecord, dashboard_fleet.rollout_id)
        assert record is not None
        record.status = "paused"
        session.add(record)
    paused = rollout_page(client, dashboard_fleet)

    assert ">Pause</button>" in running
    assert ">Abort</button>" in running
    assert ">Resume</button>" not in running
    assert ">Resume</button>" in paused
    assert ">Pause</button>" not in paused


def test_a_viewer_sees_no_buttons_and_a_viewers_post_is_refused(
    app: FastAPI,
    client: TestClient,
    browser: TestClient,
    tokens: dict[Role, str],
    dashboard_fleet: DashboardFleet,
) -> None:
    log_in(client, tokens[Role.VIEWER])
    html = rollout_page(client, dashboard_fleet)
    live = client.get(f"/ui/rollouts/{dashboard_fleet.rollout_id}/live").text
    # Even holding a valid CSRF token of an operator's page, the viewer's post is refused.
    log_in(browser, tokens[Role.OPERATOR])
    csrf = csrf_of(rollout_page(browser, dashboard_fleet))
    audit_before = audit_tail(app).seq

    answer = press(client, dashboard_fleet, "pause", csrf)

    assert "<button" not in html.split("<main>")[1]
    assert 'method="post"' not in html
    assert 'method="post"' not in live
    assert answer.status_code == 403
    assert commands(app, dashboard_fleet.rollout_id) == []
    assert audit_tail(app).seq == audit_before


@pytest.mark.parametrize("csrf", ["", "0" * 32, "not-a-token"])
def test_a_form_without_its_sessions_csrf_token_is_refused(
    app: FastAPI,
    client: TestClient,
    tokens: dict[Role, str],
    dashboard_fleet: DashboardFleet,
    csrf: str,
) -> None:
    log_in(client, tokens[Role.OPERATOR])
    audit_before = audit_tail(app).seq

    answer = press(client, dashboard_fleet, "abort", csrf)

    assert answer.status_code == 403
    assert commands(app, dashboard_fleet.rollout_id) == []
    assert audit_tail(app).seq == audit_before


def test_another_sessions_csrf_token_is_refused(
    app: FastAPI,
    client: TestClient,
    browser: TestClient,
    tokens: dict[Role, str],
    dashboard_fleet: DashboardFleet,
) -> None:
    log_in(client, tokens[Role.OPERATOR])
    log_in(browser, tokens[Role.ADMIN])
    theirs = csrf_of(rollout_page(browser, dashboard_fleet))

    answer = press(client, dashboard_fleet, "abort", theirs)

    assert answer.status_code == 403
    assert commands(app, dashboard_fleet.rollout_id) == []


def test_a_command_for_a_finished_rollout_is_a_409_page_and_is_not_audited(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], dashboard_fleet: DashboardFleet
) -> None:
    log_in(client, tokens[Role.OPERATOR])
    csrf = csrf_of(rollout_page(client, dashboard_fleet))
    with session_scope(ctx(app).engine) as session:
        record = session.get(RolloutRecord, dashboard_fleet.rollout_id)
        assert record is not None
        record.status = "aborted"
        session.add(record)
    audit_before = audit_tail(app).seq

    answer = press(client, dashboard_fleet, "resume", csrf)

    assert answer.status_code == 409
    assert "takes no commands" in answer.text
    assert audit_tail(app).seq == audit_before


def test_promote_is_not_a_dashboard_button(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], dashboard_fleet: DashboardFleet
) -> None:
    log_in(client, tokens[Role.OPERATOR])
    csrf = csrf_of(rollout_page(client, dashboard_fleet))

    answer = press(client, dashboard_fleet, "promote", csrf)

    assert answer.status_code == 422
    assert commands(app, dashboard_fleet.rollout_id) == []
