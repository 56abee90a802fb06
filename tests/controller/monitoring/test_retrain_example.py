"""examples/retrain_on_degraded.py starts the operator's job once per degraded event."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from controller.rollouts.webhooks import sign_body
from tests.brokers import free_port, wait_for_port

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "retrain_on_degraded.py"
SECRET = "hook secret"


def test_a_signed_degraded_event_starts_the_job_once_and_a_forged_one_nothing(
    tmp_path: Path,
) -> None:
    port = free_port()
    marker = tmp_path / "jobs.txt"
    process = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLE),
            "--port",
            str(port),
            "--evidence-dir",
            str(tmp_path / "events"),
            "--command",
            f"sh -c 'echo {{model}}:{{version}}:{{metric}} >> {marker}'",
        ],
        env={"EDGEFLEET_WEBHOOK_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, 15.0, alive=lambda: process.poll() is None)
        event = {
            "id": 7,
            "kind": "model_degraded",
            "details": {"model": "digits", "version": 3, "rule": {"metric": "input_drift_psi"}},
        }
        body = json.dumps(event).encode()
        url = f"http://127.0.0.1:{port}/hook"
        forged = httpx.post(url, content=body, headers={"X-Edgefleet-Signature": "sha256=00"})
        headers = {"X-Edgefleet-Signature": sign_body(SECRET, body)}
        first = httpx.post(url, content=body, headers=headers)
        again = httpx.post(url, content=body, headers=headers)  # a redelivery
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(10)

    assert (forged.status_code, first.status_code, again.status_code) == (401, 204, 204)
    assert marker.read_text().splitlines() == ["digits:3:input_drift_psi"]
    saved = json.loads((tmp_path / "events" / "7.json").read_text())
    assert saved["model"] == "digits"
