"""Dashboard sessions: a token buys a signed cookie; forged, expired, revoked, foreign and
device sessions open nothing; the login form cannot be posted from another site."""

from __future__ import annotations

from datetime import UTC, datetime
from http.cookies import SimpleCookie

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.db import session_scope
from controller.tables import ApiToken
from controller.tokens import Role
from controller.ui.sessions import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    SessionSigner,
    principal_for_session,
)
from protocol import SigningKey
from tests.controller.conftest import bearer, ctx

from .conftest import NONCE_FIELD, log_in


def session_cookie(response_headers: list[tuple[str, str]]) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for name, value in response_headers:
        if name.lower() == "set-cookie" and value.startswith(SESSION_COOKIE):
            jar.load(value)
    return jar


def post_login(client: TestClient, token: str, next_url: str = "/ui") -> httpx.Response:
    nonce = NONCE_FIELD.search(client.get("/ui/login").text)
    assert nonce is not None
    return client.post(
        "/ui/login",
        data={"token": token, "nonce": nonce[1], "next": next_url},
        follow_redirects=False,
    )


def test_a_page_without_a_session_answers_401_with_the_login_form(client: TestClient) -> None:
    response = client.get("/ui/devices", params={"online": "true"})

    assert response.status_code == 401
    assert 'action="/ui/login"' in response.text
    assert 'name="next" value="/ui/devices?online=true"' in response.text


def test_login_sets_an_httponly_strict_cookie_that_does_not_hold_the_token(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    token = tokens[Role.OPERATOR]
    answer = post_login(client, token)

    assert answer.status_code == 303
    cookie = session_cookie(answer.headers.multi_items())[SESSION_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "strict"
    assert cookie["path"] == "/ui"
    assert int(cookie["max-age"]) == SESSION_TTL_S
    assert token.split("_", 2)[2] not in cookie.value
    assert "test-operator" in client.get("/ui").text


def test_login_goes_back_to_the_page_that_asked_for_it(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    answer = post_login(client, tokens[Role.VIEWER], next_url="/ui/audit?before=3")

    assert answer.headers["location"] == "/ui/audit?before=3"


@pytest.mark.parametrize(
    "target", ["https://evil.example/ui", "//evil.example/ui", "/api/v1/models", "/ui\\@evil"]
)
def test_login_never_sends_the_browser_off_the_dashboard(
    client: TestClient, tokens: dict[Role, str], target: str
) -> None:
    answer = post_login(client, tokens[Role.VIEWER], next_url=target)

    assert answer.headers["location"] == "/ui"


@pytest.mark.parametrize("token", ["", "nonsense", "ef_unknown_secret", "ef__"])
def test_an_invalid_token_gets_no_session(client: TestClient, token: str) -> None:
    answer = post_login(client, token)

    assert answer.status_code == 401
    assert not session_cookie(answer.headers.multi_items())


def test_a_device_token_gets_no_session(client: TestClient, tokens: dict[Role, str]) -> None:
    answer = post_login(client, tokens[Role.DEVICE])

    assert answer.status_code == 403
    assert not session_cookie(answer.headers.multi_items())


def test_a_login_posted_without_the_forms_nonce_is_refused(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    # What a foreign page can do: post a token of its choosing, without our nonce cookie.
    answer = client.post(
        "/ui/login",
        data={"token": tokens[Role.VIEWER], "nonce": "guessed", "next": "/ui"},
        follow_redirects=False,
    )

    assert answer.status_code == 400
    assert not session_cookie(answer.headers.multi_items())


def test_a_revoked_token_ends_its_sessions(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    token = tokens[Role.OPERATOR]
    log_in(client, token)
    assert client.get("/ui").status_code == 200
    with session_scope(ctx(app).engine) as session:
        row = session.get(ApiToken, token.split("_")[1])
        assert row is not None
        row.revoked_at = datetime.now(UTC)
        session.add(row)

    assert client.get("/ui").status_code == 401


@pytest.mark.parametrize("part", [0, 1, 2])
def test_a_tampered_session_cookie_is_refused(
    client: TestClient, tokens: dict[Role, str], part: int
) -> None:
    log_in(client, tokens[Role.VIEWER])
    admin_id = tokens[Role.ADMIN].split("_")[1]
    pieces = client.cookies[SESSION_COOKIE].split(".")
    pieces[part] = {0: admin_id, 1: str(int(pieces[1]) + 86400), 2: "0" * 64}[part]
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, ".".join(pieces), path="/ui")

    assert client.get("/ui").status_code == 401


def test_a_session_expires(app: FastAPI, tokens: dict[Role, str]) -> None:
    signer: SessionSigner = app.state.dashboard.signer
    with session_scope(ctx(app).engine) as session:
        row = session.get(ApiToken, tokens[Role.VIEWER].split("_")[1])
        assert row is not None
        value = signer.make(row, now_s=1_000_000)
        fresh = principal_for_session(session, signer, value, now_s=1_000_000 + SESSION_TTL_S - 1)
        stale = principal_for_session(session, signer, value, now_s=1_000_000 + SESSION_TTL_S)

    assert fresh is not None
    assert fresh.role is Role.VIEWER
    assert stale is None


def test_replicas_holding_the_deployment_key_share_sessions_and_nobody_else_can_make_one(
    app: FastAPI, tokens: dict[Role, str]
) -> None:
    deployment_key = ctx(app).signer.deployment_key
    replica = SessionSigner.from_deployment_key(deployment_key)
    stranger = SessionSigner.from_deployment_key(SigningKey.generate())
    with session_scope(ctx(app).engine) as session:
        row = session.get(ApiToken, tokens[Role.VIEWER].split("_")[1])
        assert row is not None
        ours = app.state.dashboard.signer.make(row, now_s=1_000_000)
        forged = stranger.make(row, now_s=1_000_000)

        assert principal_for_session(session, replica, ours, now_s=1_000_001) is not None
        assert principal_for_session(session, replica, forged, now_s=1_000_001) is None


def test_logging_out_forgets_the_session(client: TestClient, tokens: dict[Role, str]) -> None:
    log_in(client, tokens[Role.VIEWER])

    answer = client.get("/ui/logout", follow_redirects=False)

    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login"
    assert client.get("/ui").status_code == 401


def test_scripts_may_read_pages_with_a_bearer_token(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    assert client.get("/ui", headers=bearer(tokens[Role.VIEWER])).status_code == 200
    assert client.get("/ui", headers=bearer(tokens[Role.DEVICE])).status_code == 403
