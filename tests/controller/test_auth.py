"""Every route but the health probes, enrollment, the CA certificate and the dashboard's
login needs a token; viewers cannot change anything; device tokens open nothing but
artifact downloads and the renewal of their own certificate."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from controller.api.deps import audited
from controller.db import session_scope
from controller.tables import ApiToken
from controller.tokens import Role
from controller.ui.auth import ui_audited
from tests.controller.conftest import bearer, ctx

# The CA certificate is public: a device fetches it before it has any credential.
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/api/v1/ca.pem")}
# Authenticated by the one-time enrollment token in the body instead of a bearer token.
ENROLL_ROUTE = ("POST", "/api/v1/enroll")
# What each route a device token opens answers to a bare request: no such artifact; no
# certificate request in the body.
DEVICE_ROUTES = {
    ("GET", "/artifacts/sha256/{digest}"): 404,
    ("POST", "/api/v1/device/certificate"): 422,
    ("PUT", "/api/v1/device/samples/{sha256}"): 422,
}
# Where a dashboard session starts and ends, so they cannot need one: the login form, its
# POST (which checks the token itself and stores nothing: the session is a signed
# cookie), and the logout link (it only clears this browser's cookie). The dashboard's
# static files are a mount, not a route, and hold a stylesheet and a script.
LOGIN_ROUTES = {("GET", "/ui/login"), ("POST", "/ui/login"), ("GET", "/ui/logout")}
LOGIN_POST = ("POST", "/ui/login")
# The dashboard's forms authenticate by session cookie, not bearer token; ``ui_audited``
# records them through the API's ``audited``.
AUDIT_DEPENDENCIES = {audited, ui_audited}
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def walk_routes(routes: list[object]) -> Iterator[APIRoute]:
    """Every API route of the app, including those in included routers."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        original = getattr(route, "original_router", None)
        if original is not None:
            yield from walk_routes(original.routes)


def all_endpoints(app: FastAPI) -> list[tuple[str, str]]:
    endpoints = [
        (method, route.path)
        for route in walk_routes(app.routes)
        for method in sorted(route.methods or ())
        if method != "HEAD"
    ]
    assert len(endpoints) >= 10, endpoints  # the walk found the routers
    return endpoints


def concrete(path: str) -> str:
    values = {"name": "digits", "version": "1", "digest": "a" * 64}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], "x"), path)


def test_every_route_but_the_probes_enrollment_and_login_refuses_a_missing_token(
    app: FastAPI, client: TestClient
) -> None:
    unprotected = []
    for method, path in all_endpoints(app):
        response = client.request(method, concrete(path))
        if response.status_code != 401:
            unprotected.append((method, path))
    assert sorted(unprotected) == sorted(OPEN_ROUTES | {ENROLL_ROUTE} | LOGIN_ROUTES)


def test_enrollment_without_a_valid_enrollment_token_is_refused(client: TestClient) -> None:
    for token in ["", "et_unknown_secret", "ef_unknown_secret"]:
        response = client.post(ENROLL_ROUTE[1], json={"token": token})
        assert response.status_code == 403, response.text
    assert client.post(ENROLL_ROUTE[1], json={}).status_code == 422


def test_device_token_opens_only_artifact_downloads(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    opened = []
    for method, path in all_endpoints(app):
        if (method, path) in OPEN_ROUTES | LOGIN_ROUTES or (method, path) == ENROLL_ROUTE:
            continue
        response = client.request(method, concrete(path), headers=bearer(tokens[Role.DEVICE]))
        if response.status_code != 403:
            opened.append((method, path, response.status_code))
    # The device routes answer instead of refusing.
    assert sorted(opened) == sorted((*route, code) for route, code in DEVICE_ROUTES.items())


def test_health_probes_answer_without_a_token(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


@pytest.mark.parametrize(
    "token", ["", "nonsense", "ef_unknown_secret", "ef__", "Bearer", "ef_" + "a" * 200]
)
def test_malformed_or_unknown_tokens_are_refused(client: TestClient, token: str) -> None:
    response = client.get("/api/v1/models", headers=bearer(token))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_right_id_with_wrong_secret_is_refused(client: TestClient, tokens: dict[Role, str]) -> None:
    prefix, token_id, _secret = tokens[Role.ADMIN].split("_", 2)
    forged = f"{prefix}_{token_id}_{'x' * 43}"
    assert client.get("/api/v1/models", headers=bearer(forged)).status_code == 401


def test_revoked_token_is_refused(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    token = tokens[Role.OPERATOR]
    assert client.get("/api/v1/models", headers=bearer(token)).status_code == 200
    with session_scope(ctx(app).engine) as session:
        row = session.get(ApiToken, token.split("_")[1])
        assert row is not None
        row.revoked_at = datetime.now(UTC)
        session.add(row)
    assert client.get("/api/v1/models", headers=bearer(token)).status_code == 401


def test_tokens_are_stored_hashed(app: FastAPI, tokens: dict[Role, str]) -> None:
    with session_scope(ctx(app).engine) as session:
        for token in tokens.values():
            row = session.get(ApiToken, token.split("_")[1])
            assert row is not None
            assert token.split("_", 2)[2] not in row.secret_sha256


def test_viewer_cannot_call_any_mutating_route(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    allowed = []
    for method, path in all_endpoints(app):
        if method in MUTATING and (method, path) not in {ENROLL_ROUTE, LOGIN_POST}:
            response = client.request(method, concrete(path), headers=bearer(tokens[Role.VIEWER]))
            if response.status_code != 403:
                allowed.append((method, path, response.status_code))
    assert allowed == []


def test_every_mutating_route_is_audited(app: FastAPI) -> None:
    unaudited = [
        (method, route.path)
        for route in walk_routes(app.routes)
        for method in sorted((route.methods or set()) & MUTATING)
        if not AUDIT_DEPENDENCIES & {dep.call for dep in route.dependant.dependencies}
    ]
    # Enrollment has no principal for ``audited``; it appends its own entry (checked in
    # tests/controller/devices/test_enrollment.py). Logging in changes nothing stored.
    assert sorted(unaudited) == sorted([ENROLL_ROUTE, LOGIN_POST])


def test_metrics_need_a_token_and_count_requests(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    client.get("/healthz")
    response = client.get("/metrics", headers=bearer(tokens[Role.VIEWER]))
    assert response.status_code == 200
    assert 'edgefleet_http_requests_total{method="GET",route="/healthz",status="200"}' in (
        response.text
    )


def test_openapi_schema_needs_a_token(client: TestClient, tokens: dict[Role, str]) -> None:
    assert client.get("/api/v1/openapi.json").status_code == 401
    schema = client.get("/api/v1/openapi.json", headers=bearer(tokens[Role.VIEWER])).json()
    assert "/api/v1/models/{name}/versions" in schema["paths"]


@pytest.mark.parametrize(
    ("role", "needed", "may"),
    [
        (Role.DEVICE, Role.DEVICE, True),
        (Role.DEVICE, Role.VIEWER, False),
        (Role.VIEWER, Role.DEVICE, True),
        (Role.VIEWER, Role.OPERATOR, False),
        (Role.OPERATOR, Role.VIEWER, True),
        (Role.OPERATOR, Role.ADMIN, False),
        (Role.ADMIN, Role.DEVICE, True),
    ],
)
def test_roles_are_ordered_device_viewer_operator_admin(
    role: Role, needed: Role, may: bool
) -> None:
    assert role.may(needed) is may
