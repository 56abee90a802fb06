"""The dashboard says where capture is on: a badge on the model's page and the device's."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.tokens import Role
from tests.controller.conftest import bearer, ctx
from tests.controller.fleet_fixtures import add_devices, add_release


def _capture(client: TestClient, token: str, *, off: bool = False) -> None:
    body = {"model": "digits", "for_s": 3600, "off": off}
    answer = client.post("/api/v1/capture", json=body, headers=bearer(token))
    assert answer.status_code == 201, answer.text


def test_model_and_device_pages_say_when_capture_is_on(
    app: FastAPI, client: TestClient, tokens: dict[Role, str]
) -> None:
    release = add_release(ctx(app), "digits", 1)
    [device] = add_devices(ctx(app).engine, 1, running=release)
    viewer = bearer(tokens[Role.VIEWER])

    def pages() -> tuple[str, str]:
        model = client.get("/ui/models/digits", headers=viewer)
        device_page = client.get(f"/ui/devices/{device}", headers=viewer)
        assert (model.status_code, device_page.status_code) == (200, 200)
        return model.text, device_page.text

    model_html, device_html = pages()
    assert "capture on" not in model_html
    assert "capture of digits" not in device_html

    _capture(client, tokens[Role.OPERATOR])
    model_html, device_html = pages()
    assert "capture on until" in model_html
    assert "capture of digits on until" in device_html

    _capture(client, tokens[Role.OPERATOR], off=True)
    model_html, device_html = pages()
    assert "capture on" not in model_html
    assert "capture of digits" not in device_html
