"""The OpenAPI document says what every GET route returns: a named schema, not "object"."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from controller.tokens import Role
from tests.controller.conftest import bearer

# Not JSON: Prometheus text, artifact bytes and the CA certificate (PEM).
NOT_JSON = {
    "/metrics",
    "/artifacts/sha256/{digest}",
    "/api/v1/ca.pem",
    "/api/v1/samples/{sha256}",  # a sample's .npz
}


def _names_a_schema(schema: dict[str, Any]) -> bool:
    if "$ref" in schema:
        return True
    if schema.get("type") == "array":
        return _names_a_schema(schema.get("items", {}))
    return any(_names_a_schema(option) for option in schema.get("anyOf", []))


def test_every_get_route_returns_a_named_schema(
    client: TestClient, tokens: dict[Role, str]
) -> None:
    document = client.get("/api/v1/openapi.json", headers=bearer(tokens[Role.VIEWER])).json()

    untyped = []
    for path, operations in document["paths"].items():
        if "get" not in operations or path in NOT_JSON:
            continue
        answer = operations["get"]["responses"]["200"]
        schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
        if not _names_a_schema(schema):
            untyped.append(path)

    assert untyped == []
