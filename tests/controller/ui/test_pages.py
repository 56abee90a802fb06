"""Each dashboard page renders what the API knows, escaped, for a viewer's session."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.audit import append_audit
from controller.db import session_scope
from controller.monitoring.alerts import create_rule
from controller.monitoring.tables import AlertEpisode
from controller.rollouts.tables import RolloutRecord
from controller.tokens import Principal, Role
from controller.ui.rendering import SECURITY_HEADERS
from tests.controller.conftest import ctx

from .conftest import EVIL, DashboardFleet, log_in


@pytest.fixture
def viewer(
    client: TestClient, tokens: dict[Role, str], dashboard_fleet: DashboardFleet
) -> TestClient:
    log_in(client, tokens[Role.VIEWER])
    return client


def page(client: TestClient, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response.text


def cells(html: str) -> list[str]:
    return [
        re.sub(r"<[^>]+>", "", cell).strip()
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", html, re.S)
    ]


@pytest.mark.parametrize(
    ("path", "heading"),
    [
        ("/ui", "Fleet overview"),
        ("/ui/devices", "Devices"),
        ("/ui/devices/dev-0000", "Device dev-0000"),
        ("/ui/models", "Models"),
        ("/ui/models/digits", "Model digits"),
        ("/ui/alerts", "Alerts"),
        ("/ui/audit", "Audit log"),
    ],
)
def test_every_page_renders_with_its_security_headers(
    viewer: TestClient, path: str, heading: str
) -> None:
    response = viewer.get(path)

    assert response.status_code == 200, response.text
    assert f"<h1>{heading}" in response.text
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value


def test_overview_counts_devices_by_phase_release_and_connection(viewer: TestClient) -> None:
    html = page(viewer, "/ui")

    assert 'id="count-devices">5<' in html
    assert 'id="count-online">4<' in html
    assert 'id="count-offline">1<' in html
    rows = cells(html)
    assert rows[rows.index("committed") : rows.index("committed") + 3] == ["committed", "1", "1"]
    assert rows[rows.index("never reported") : rows.index("never reported") + 3] == [
        "never reported",
        "4",
        "3",
    ]
    assert rows[rows.index("digits:1") : rows.index("digits:1") + 3] == ["digits:1", "4", "4"]
    assert rows[rows.index("no model yet") + 1] == "1"


def test_overview_lists_the_rollout_under_way(
    viewer: TestClient, dashboard_fleet: DashboardFleet
) -> None:
    html = page(viewer, "/ui")

    assert f'href="/ui/rollouts/{dashboard_fleet.rollout_id}"' in html
    assert "status-running" in html


def test_devices_filter_by_selector_and_connection(viewer: TestClient) -> None:
    offline = page(viewer, "/ui/devices?online=false")
    berlin = page(viewer, "/ui/devices?selector=site%3Dberlin&online=true")

    assert "far-0000" in offline
    assert "dev-0000" not in offline
    assert re.findall(r'href="/ui/devices/([\w-]+)"', berlin) == [f"dev-{i:04d}" for i in range(4)]


def test_a_malformed_selector_is_a_400_page(viewer: TestClient) -> None:
    response = viewer.get("/ui/devices", params={"selector": "site in (("})

    assert response.status_code == 400
    assert "text/html" in response.headers["content-type"]


def test_device_page_shows_reported_and_desired_state_events_and_telemetry(
    viewer: TestClient, dashboard_fleet: DashboardFleet
) -> None:
    html = page(viewer, f"/ui/devices/{dashboard_fleet.device_id}")

    assert "0.1.0" in html  # agent version
    assert f'href="/ui/rollouts/{dashboard_fleet.rollout_id}"' in html  # desired by the rollout
    assert "digits:2" in html  # its canary deployment
    row = cells(html)
    assert "4.25" in row  # p95 of its telemetry window
    assert "120" in row
    assert "committed" in row  # its event
    assert "<h2>Models</h2>" in html
    assert "digits" in row  # its one model, in the models table


def test_model_page_shows_versions_with_their_evaluation_reports_and_releases(
    viewer: TestClient, dashboard_fleet: DashboardFleet
) -> None:
    html = page(viewer, "/ui/models/digits")

    assert 'id="v2"' in html
    assert 'id="v1"' in html
    assert "int8-dynamic variant of version 1" in html
    assert "Evaluation report" in html
    assert "0.995" in html  # top1_agreement
    assert html.count("digits:1") >= 1
    assert html.count("digits:2") >= 1
    assert dashboard_fleet.rollout_id in html


def test_rollout_page_shows_wave_progress_gates_and_judgements(
    viewer: TestClient, dashboard_fleet: DashboardFleet
) -> None:
    html = page(viewer, f"/ui/rollouts/{dashboard_fleet.rollout_id}")

    assert 'id="rollout-status">running<' in html
    assert 'id="rollout-wave">2<' in html
    assert '<progress value="1" max="1">' in html  # the canary committed
    assert "failure_rate" in html  # a gate, with its value and limit
    assert "passed" in html
    assert f'data-live-src="/ui/rollouts/{dashboard_fleet.rollout_id}/live"' in html


def test_rollout_page_shows_the_shadow_stage_and_its_gates(
    app: FastAPI, viewer: TestClient, dashboard_fleet: DashboardFleet
) -> None:
    gate = {"name": "shadow_agreement", "value": 0.5, "threshold": 0.98, "passed": False}
    with session_scope(ctx(app).engine) as session:
        record = session.get(RolloutRecord, dashboard_fleet.rollout_id)
        assert record is not None
        record.state = {
            **record.state,
            "shadow_devices": [dashboard_fleet.device_id],
            "shadow_started_s": 1.0,
            "shadow_judgement": {
                "wave": -1,
                "at_s": 2.0,
                "passed": False,
                "gates": [{**gate, "note": "500 rows compared, of 500 samples from 1 devices"}],
            },
        }
        session.add(record)

    html = page(viewer, f"/ui/rollouts/{dashboard_fleet.rollout_id}")

    stage = html[html.index('id="shadow-stage"') : html.index("<h2>Waves</h2>")]
    assert "on 1 device\n" in stage
    assert f"/ui/devices/{dashboard_fleet.device_id}" in stage
    assert '<span class="badge bad">stopped</span>' in stage
    rows = cells(stage)
    assert rows[:4] == ["shadow_agreement", "0.5", "0.98", "fail"]


def test_the_live_fragment_is_the_refreshing_part_only(
    viewer: TestClient, dashboard_fleet: DashboardFleet
) -> None:
    html = page(viewer, f"/ui/rollouts/{dashboard_fleet.rollout_id}/live")

    assert "<html" not in html
    assert 'id="rollout-status"' in html
    assert "<h2>Waves</h2>" in html


def test_everything_a_device_reports_is_escaped(
    viewer: TestClient, dashboard_fleet: DashboardFleet
) -> None:
    pages = [page(viewer, "/ui/devices"), page(viewer, f"/ui/devices/{dashboard_fleet.device_id}")]

    for html in pages:
        assert EVIL not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize("path", ["/ui/devices/nope", "/ui/rollouts/ro-000000", "/ui/models/nope"])
def test_missing_things_are_404_pages(viewer: TestClient, path: str) -> None:
    response = viewer.get(path)

    assert response.status_code == 404
    assert "<h1>404</h1>" in response.text


def test_the_audit_log_pages_back_fifty_entries_at_a_time(app: FastAPI, viewer: TestClient) -> None:
    actor = Principal(token_id="t", name="someone", role=Role.OPERATOR)
    with session_scope(ctx(app).engine) as session:
        for index in range(60):
            append_audit(session, actor, action="TEST", target=f"thing {index}")

    newest = page(viewer, "/ui/audit")
    older_link = re.search(r'href="/ui/audit\?before=(\d+)"', newest)
    assert older_link is not None
    older = page(viewer, f"/ui/audit?before={older_link[1]}")

    assert newest.count("<tr>") - 1 == 50
    assert "thing 59" in newest
    assert "thing 59" not in older
    total = 60 + 1  # and the API's rollout creation
    assert (newest.count("<tr>") - 1) + (older.count("<tr>") - 1) == total


def test_static_files_need_no_session(client: TestClient) -> None:
    assert client.get("/ui/static/dashboard.css").status_code == 200
    assert client.get("/ui/static/dashboard.js").status_code == 200


def test_the_alerts_page_shows_rules_and_a_degraded_release(
    app: FastAPI, viewer: TestClient
) -> None:
    with session_scope(ctx(app).engine) as session:
        rule = create_rule(
            session,
            model="digits",
            metric="input_drift_psi",
            threshold=0.25,
            window_s=600.0,
            min_devices=1,
            min_requests=100,
            actor="test",
        )
        session.add(
            AlertEpisode(
                rule_id=rule.id,
                model_name="digits",
                version=2,
                value=0.61,
                evidence={"device_count": 7, "note": f"input_drift_psi 0.61 above 0.25 {EVIL}"},
            )
        )

    html = page(viewer, "/ui/alerts")

    assert rule.id in html
    assert "digits:2" in html
    assert '<span class="badge bad">degraded</span>' in html
    assert EVIL not in html  # escaped
