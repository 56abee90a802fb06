"""The dashboard in a real browser against a real controller.

``edgefleet controller serve`` runs with its embedded broker; a model is pushed and
released, two devices are enrolled (no agent runs, so they stay offline) and a rollout is
created, all through the HTTP API. Headless Chromium (Debian's, driven by Playwright)
then logs in as an operator, opens every page, pauses and resumes the rollout by clicking
while the real rollout loop applies the commands, and logs in as a viewer, who gets no
buttons. Every page is saved as a screenshot in the test's directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulator.controller_process import ControllerProcess
from tests.agent.e2e.models import affine_model
from tests.conftest import require_service
from tests.fleet_e2e.harness import Api

pytestmark = pytest.mark.timeout(600)

CHROMIUM = Path("/usr/bin/chromium")
MODEL = "affine"
WAIT_S = 60.0
# Playwright's waits are in milliseconds; the rollout loop applies commands within
# EDGEFLEET_PLAN_INTERVAL_S (0.5 s in the harness), a page refreshes every 2.5 s.
PAGE_WAIT_MS = 60_000
OPERATOR_SHOTS = [
    *("overview", "devices", "device", "models", "model", "rollout"),
    *("rollout-paused", "rollout-resumed", "audit"),
]


@dataclass(frozen=True)
class Dashboard:
    url: str
    api: Api
    operator_token: str
    viewer_token: str
    rollout_id: str
    controller: ControllerProcess


def wait_until(check: Callable[[], Any], what: str, context: Callable[[], str]) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (result := check()):
        assert time.monotonic() < deadline, f"{what} after {WAIT_S} s\n{context()}"
        time.sleep(0.3)
    return result


@pytest.fixture(scope="module")
def sync_playwright() -> Any:
    """Playwright's entry point, or a skip saying what is missing (a failure with CI=true)."""
    try:
        from playwright.sync_api import sync_playwright as entry
    except ImportError:
        require_service("playwright", "pip install -e '.[dev]' installs it")
    if not CHROMIUM.exists():
        require_service("chromium", "'make chromium' installs Debian's package (as root)")
    return entry


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    directory = tmp_path_factory.mktemp("dashboard")
    controller = ControllerProcess(directory / "controller")
    controller.start()
    try:
        api = Api(controller.url, controller.create_token("admin"))
        api.push_and_release(MODEL, affine_model(directory / "affine.onnx", 1.0))
        for index in range(2):
            token = api.call("POST", "/api/v1/enrollment-tokens", json={"labels": {"site": "lab"}})[
                "token"
            ]
            api.call("POST", "/api/v1/enroll", json={"token": token, "device_id": f"cam-{index}"})
        rollout_id = api.rollout(f"{MODEL}:1", selector="site=lab", waves="1,100%")
        yield Dashboard(
            url=controller.url,
            api=api,
            operator_token=controller.create_token("operator"),
            viewer_token=controller.create_token("viewer"),
            rollout_id=rollout_id,
            controller=controller,
        )
    finally:
        controller.stop()


@pytest.fixture
def browser(sync_playwright: Any) -> Iterator[Any]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


class Session:
    """One browser tab logged in with a token; screenshots go to ``shots``."""

    def __init__(self, browser: Any, dashboard: Dashboard, shots: Path) -> None:
        from playwright.sync_api import expect

        self.expect = expect
        self.dashboard = dashboard
        self.shots = shots
        # Script errors and blocked scripts or styles (the content security policy); the
        # 401 of a page asked for before logging in is not one.
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.set_default_timeout(PAGE_WAIT_MS)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)

    def log_in(self, token: str, path: str = "/ui") -> None:
        self.page.goto(self.dashboard.url + path)  # no session yet: the login form
        self.page.fill("#token", token)
        self.page.click("form button[type=submit]")

    def open(self, path: str, heading: str, shot: str) -> None:
        self.page.goto(self.dashboard.url + path)
        self.expect(self.page.locator("h1")).to_contain_text(heading)
        self.screenshot(shot)

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


def test_a_rollout_without_online_devices_waits_in_its_first_wave(dashboard: Dashboard) -> None:
    def waiting() -> dict[str, Any] | None:
        status = dashboard.api.rollout_status(dashboard.rollout_id)
        wanted = any("none online" in note for note in status["notes"])
        return status if status["status"] == "running" and wanted else None

    status = wait_until(
        waiting, "the rollout is not waiting for devices", dashboard.controller.log_tail
    )

    assert status["wave"] == 0
    assert status["waves"][0]["outcomes"] == {}  # nobody assigned: both devices are offline


def test_an_operator_opens_every_page_and_pauses_and_resumes_by_clicking(
    browser: Any, dashboard: Dashboard, tmp_path: Path
) -> None:
    tab = Session(browser, dashboard, tmp_path)
    status = tab.page.locator("#rollout-status")
    rollout_path = f"/ui/rollouts/{dashboard.rollout_id}"

    tab.log_in(dashboard.operator_token)
    tab.expect(tab.page.locator("h1")).to_have_text("Fleet overview")
    tab.expect(tab.page.locator("#count-devices")).to_have_text("2")
    tab.screenshot("overview")
    tab.open("/ui/devices", "Devices", "devices")
    tab.open("/ui/devices/cam-0", "Device cam-0", "device")
    tab.open("/ui/models", "Models", "models")
    tab.open(f"/ui/models/{MODEL}", f"Model {MODEL}", "model")
    tab.open(rollout_path, f"Rollout {dashboard.rollout_id}", "rollout")
    tab.expect(status).to_have_text("running")
    tab.expect(tab.page.locator("[data-live-status]")).to_contain_text("Live: updated")

    tab.page.click("button:text-is('Pause')")
    tab.expect(tab.page.locator(".notice")).to_contain_text("Pause queued")
    tab.expect(status).to_have_text("paused")  # the loop applied it; the page refreshed
    tab.screenshot("rollout-paused")
    tab.page.click("button:text-is('Resume')")
    tab.expect(status).to_have_text("running")
    tab.screenshot("rollout-resumed")
    asked: list[str] = []
    tab.page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    tab.page.click("button:text-is('Abort')")  # asks first; dismissed, nothing is sent
    assert asked == [f"Abort rollout {dashboard.rollout_id}?"]
    tab.open("/ui/audit", "Audit log", "audit")

    audit = tab.page.locator("table").inner_text()
    assert audit.count("POST /ui/rollouts/{rollout_id}/{kind}") == 2
    assert '"command": "abort"' not in audit
    assert dashboard.api.rollout_status(dashboard.rollout_id)["status"] == "running"
    assert tab.errors == []  # nothing blocked by the content security policy
    shots = sorted(tmp_path.glob("*.png"))
    assert sorted(s.stem for s in shots) == sorted(OPERATOR_SHOTS)
    assert all(s.stat().st_size > 0 for s in shots)


def test_a_viewer_sees_the_rollout_but_no_buttons(
    browser: Any, dashboard: Dashboard, tmp_path: Path
) -> None:
    tab = Session(browser, dashboard, tmp_path)
    tab.page.goto(dashboard.url + "/ui")
    tab.expect(tab.page.locator("h1")).to_have_text("Log in to the dashboard")
    tab.screenshot("login")

    tab.log_in(dashboard.viewer_token, f"/ui/rollouts/{dashboard.rollout_id}")
    tab.expect(tab.page.locator("h1")).to_have_text(f"Rollout {dashboard.rollout_id}")
    tab.expect(tab.page.locator("#rollout-status")).to_be_visible()
    tab.expect(tab.page.locator("[data-live-status]")).to_contain_text("Live: updated")
    tab.screenshot("rollout-viewer")

    assert tab.page.locator("main button").count() == 0
    assert tab.page.locator("main form[method=post]").count() == 0
    assert tab.errors == []
    shots = sorted(tmp_path.glob("*.png"))
    assert sorted(s.stem for s in shots) == ["login", "rollout-viewer"]
    assert all(s.stat().st_size > 0 for s in shots)
