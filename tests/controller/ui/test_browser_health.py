"""The model page's health charts in a real browser, from telemetry sent over MQTT.

``edgefleet controller serve`` runs with its embedded broker; a model is pushed and
released, and two devices are enrolled through the HTTP API. Each device then publishes
telemetry windows on its own topic with the MQTT credentials enrollment gave it, as an
agent does; the controller's bridge ingests them. Headless Chromium (Debian's, driven by
Playwright) logs in as a viewer and opens the model page: one line per release in each
chart, nothing blocked by the content security policy. The page is saved as a screenshot.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from protocol import LatencySummary, ReleaseRef, TelemetryBatch, TelemetryWindow
from protocol.histograms import LATENCY_BOUNDS_MS, LATENCY_BUCKETS
from protocol.topics import Channel, device_topic
from simulator.controller_process import ControllerProcess
from tests.agent.e2e.models import affine_model
from tests.brokers import BrokerEndpoint
from tests.controller.ui.test_browser import CHROMIUM, PAGE_WAIT_MS, sync_playwright
from tests.fleet_e2e.harness import Api
from tests.mqtt_client import TestClient as MqttClient

pytestmark = pytest.mark.timeout(600)

__all__ = ["sync_playwright"]  # the fixture, shared with the dashboard's other browser test

MODEL = "affine"
WAIT_S = 60.0
TOPIC_PREFIX = "edgefleet/v1"


def _window(at: datetime, version: int, sha256: str, latency_bucket: int) -> TelemetryWindow:
    counts = [0] * LATENCY_BUCKETS
    counts[latency_bucket] = 50
    return TelemetryWindow(
        model=MODEL,
        release=ReleaseRef(model=MODEL, version=version, sha256=sha256),
        window_start=at,
        window_s=10.0,
        requests=50,
        errors=1,
        nonfinite_outputs=0,
        top1_confidence_mean=0.7 + 0.1 * version,
        latency=LatencySummary(
            p50_ms=1.0, p95_ms=1.0, p99_ms=1.0, bounds_ms=list(LATENCY_BOUNDS_MS), counts=counts
        ),
    )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControllerProcess, Api]]:
    directory = tmp_path_factory.mktemp("health-dashboard")
    controller = ControllerProcess(directory / "controller")
    controller.start()
    try:
        api = Api(controller.url, controller.create_token("admin"))
        for bias in (1.0, 2.0):
            api.push_and_release(MODEL, affine_model(directory / f"affine-{bias}.onnx", bias))
        releases = {
            r["version"]: r["sha256"]
            for r in api.call("GET", "/api/v1/releases")
            if r["model_name"] == MODEL
        }
        now = datetime.now(UTC).replace(microsecond=0)
        endpoint = BrokerEndpoint("embedded", "127.0.0.1", controller.mqtt_port)
        for index, version in enumerate((1, 2)):
            token = api.call("POST", "/api/v1/enrollment-tokens", json={})["token"]
            enrolled = api.call(
                "POST", "/api/v1/enroll", json={"token": token, "device_id": f"cam-{index}"}
            )
            batch = TelemetryBatch(
                device_id=enrolled["device_id"],
                seq=1,
                windows=[
                    _window(
                        now - timedelta(minutes=m), version, releases[version], 15 + m + 4 * version
                    )
                    for m in (9, 6, 3)
                ],
            )
            with MqttClient(
                endpoint,
                client_id=enrolled["device_id"],
                username=enrolled["mqtt_username"],
                password=enrolled["mqtt_password"],
            ) as device:
                device.publish(
                    device_topic(TOPIC_PREFIX, enrolled["device_id"], Channel.TELEMETRY),
                    batch.model_dump_json().encode(),
                )
        yield controller, api
    finally:
        controller.stop()


def _ingested(api: Api) -> dict[str, Any]:
    """The API's series once the bridge has written both devices' windows."""
    deadline = time.monotonic() + WAIT_S
    while True:
        series: dict[str, Any] = api.call("GET", f"/api/v1/models/{MODEL}/health?range=1h")
        if sum(len(r["points"]) for r in series["releases"]) == 6:
            return series
        assert time.monotonic() < deadline, f"telemetry not ingested: {series}"
        time.sleep(0.3)


def test_a_viewer_sees_each_releases_health_over_time(
    sync_playwright: Any, fleet: tuple[ControllerProcess, Api], tmp_path: Path
) -> None:
    controller, api = fleet
    series = _ingested(api)
    assert [r["version"] for r in series["releases"]] == [1, 2]
    viewer_token = controller.create_token("viewer")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(PAGE_WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "console",
                lambda m: (
                    errors.append(m.text)
                    if m.type == "error" and "Failed to load resource" not in m.text
                    else None
                ),
            )
            page.goto(f"{controller.url}/ui/models/{MODEL}?range=1h")
            page.fill("#token", viewer_token)
            page.click("form button[type=submit]")
            page.locator("section#health").wait_for()

            charts = page.locator("figure.chart")
            assert charts.count() == 4
            for version in (1, 2):
                dots = page.locator(
                    f'figure[data-figure="p95_ms"] g[data-version="{version}"] circle'
                )
                assert dots.count() == 3
            polyline = page.locator('figure[data-figure="confidence_mean"] g.series-0 polyline')
            box = polyline.first.bounding_box()
            assert box is not None
            assert box["width"] > 10  # a line across three buckets (flat: no height)
            assert "No telemetry in this range." not in page.inner_text("main")
            page.locator("section#health").screenshot(path=str(tmp_path / "health.png"))
            page.goto(f"{controller.url}/ui/models/{MODEL}?range=7d")
            assert page.locator("figure.chart").count() == 4
            page.locator("section#health").screenshot(path=str(tmp_path / "health-7d.png"))
        finally:
            browser.close()

    assert errors == []  # nothing blocked by the content security policy
    assert (tmp_path / "health.png").stat().st_size > 0
    assert (tmp_path / "health-7d.png").stat().st_size > 0
