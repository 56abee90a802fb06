"""Shadow evaluation on a real agent: a candidate runs beside the serving model.

The device verifies, downloads, sandbox-checks and loads the candidate, runs it on copies
of live requests and reports how it differs in its telemetry; every answer still comes
from the serving model. A shadow survives a crash only while its order is on, and stops
at a stop order, at its ``until`` and when a release of its model is deployed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocol import (
    Channel,
    Envelope,
    Release,
    ShadowOrder,
    ShadowWindow,
    TelemetryBatch,
    device_topic,
)
from protocol.trust_root import Role
from tests.agent.e2e.agent_process import AgentProcess
from tests.agent.e2e.conftest import DEVICE, deploy, sequence_of
from tests.agent.e2e.double import ControllerDouble
from tests.agent.e2e.models import affine_model, log1p_model, nan_model, release_of
from tests.brokers import BrokerEndpoint
from tests.mqtt_client import TestClient

ROW = [1.0, 2.0, 3.0, 4.0]


def shadow(
    double: ControllerDouble,
    base: Release,
    candidate: Release | None,
    *,
    until: timedelta = timedelta(hours=1),
    signer: Role = Role.RELEASE,
) -> Envelope:
    """Publish a shadow order of ``candidate`` (None: stop) for the model of ``base``."""
    now = datetime.now(UTC)
    order = ShadowOrder(
        release=None
        if candidate is None
        else candidate.sign(double.keyring.keys[signer]).to_json_obj(),
        until=None if candidate is None else now + until,
    )
    envelope = double.shadow(DEVICE, base.model, order, now=now)
    double.publish_desired(DEVICE, envelope)
    return envelope


@pytest.fixture
def telemetry(mosquitto: BrokerEndpoint, topic_prefix: str) -> Iterator[TestClient]:
    with TestClient(mosquitto) as client:
        client.subscribe(device_topic(topic_prefix, DEVICE, Channel.TELEMETRY))
        yield client


def shadow_windows(client: TestClient, *, wanted: int, timeout_s: float = 30) -> list[ShadowWindow]:
    found: list[ShadowWindow] = []
    deadline = time.monotonic() + timeout_s
    while sum(w.samples for w in found) < wanted and time.monotonic() < deadline:
        try:
            message = client.receive(timeout_s=1)
        except Exception:
            continue
        batch = TelemetryBatch.from_payload(bytes(message.payload))
        found += [w.shadow for w in batch.windows if w.shadow is not None]
    return found


class Traffic:
    """Calls the local API until stopped; keeps every answer."""

    def __init__(self, url: str, row: list[float] = ROW) -> None:
        self.url, self.row = url, row
        self.answers: list[list[float]] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": self.row}]}
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    response = client.post(f"{self.url}/v2/models/affine/infer", json=body)
                except httpx.ConnectError:  # the agent is not listening yet
                    time.sleep(0.1)
                    continue
                if response.status_code == 200:
                    self.answers.append(response.json()["outputs"][0]["data"])
                else:
                    self.failures.append(response.text)
                time.sleep(0.002)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def events_of(double: ControllerDouble, kind: str) -> list[Any]:
    return [e for e in double.device_events(DEVICE) if e.type == kind]


def test_a_shadow_runs_beside_the_serving_model_and_never_answers(
    agent: AgentProcess,
    base: Release,
    double: ControllerDouble,
    models_dir: Path,
    telemetry: TestClient,
) -> None:
    candidate = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    shadow(double, base, candidate)
    started = double.wait_for_event(DEVICE, "shadow_started")
    assert started.details["release"]["version"] == 2
    assert started.details["max_cpu_fraction"] == pytest.approx(0.2)

    with Traffic(agent.api_url) as traffic:
        windows = shadow_windows(telemetry, wanted=20)
    assert not traffic.failures
    # Every answer is the serving model's, x + 1; the candidate's would be x + 2.
    assert traffic.answers
    assert all(a == [2.0, 3.0, 4.0, 5.0] for a in traffic.answers)
    samples = sum(w.samples for w in windows)
    assert samples >= 20, windows
    assert {w.release.version for w in windows} == {2}
    assert sum(w.errors + w.nonfinite for w in windows) == 0
    # |(x + 2) - (x + 1)| summed over |x + 1|: 4 / 14 per sample.
    assert sum(w.distance_sum for w in windows) / samples == pytest.approx(4 / 14, rel=1e-5)
    assert all(sum(w.cpu_counts) == w.samples for w in windows)
    assert (agent.data_dir / "shadow" / "affine").is_dir()

    # A crash while the order is on: the shadow comes back, checked and loaded again.
    agent.kill()
    agent.start()
    double.wait_for(lambda: len(events_of(double, "shadow_started")) == 2, "the shadow again")

    # A stop order ends it and leaves nothing; a restart does not bring it back.
    shadow(double, base, None)
    stopped = double.wait_for_event(DEVICE, "shadow_stopped")
    assert stopped.reason == "ordered"
    assert not (agent.data_dir / "shadow" / "affine").exists()
    agent.stop()
    agent.start()
    with Traffic(agent.api_url) as traffic:
        double.wait_for(lambda: len(traffic.answers) > 20, "answers after the restart")
    assert len(events_of(double, "shadow_started")) == 2
    assert all(a == [2.0, 3.0, 4.0, 5.0] for a in traffic.answers)


def test_the_sandbox_refuses_a_broken_shadow_and_live_nan_is_counted_then_a_release_ends_it(
    agent: AgentProcess,
    base: Release,
    double: ControllerDouble,
    models_dir: Path,
    telemetry: TestClient,
) -> None:
    broken = release_of(double, nan_model(models_dir / "nan.onnx"), version=2)
    shadow(double, base, broken)
    failed = double.wait_for_event(DEVICE, "shadow_failed")
    assert failed.reason == "nonfinite_output"
    assert not (agent.data_dir / "shadow" / "affine").exists()

    # log(x + 1): finite on its golden inputs, NaN on live inputs below -1.
    candidate = release_of(double, log1p_model(models_dir / "log1p.onnx"), version=3)
    shadow(double, base, candidate, until=timedelta(minutes=5))
    double.wait_for_event(DEVICE, "shadow_started")
    with Traffic(agent.api_url, row=[-5.0] * 4) as traffic:
        windows = shadow_windows(telemetry, wanted=10)
    assert not traffic.failures
    assert all(a == [-4.0] * 4 for a in traffic.answers)
    samples = sum(w.samples for w in windows)
    assert samples >= 10
    assert sum(w.nonfinite for w in windows) == samples

    newer = release_of(double, affine_model(models_dir / "c.onnx", 3.0), version=4)
    final = double.wait_for_final(DEVICE, sequence_of(deploy(double, newer)))
    assert final.type == "committed", double.event_summary()
    assert events_of(double, "shadow_stopped")[0].reason == "update"
    assert not (agent.data_dir / "shadow" / "affine").exists()


def test_a_shadow_ends_at_its_until_and_forged_or_unwanted_ones_never_run(
    agent: AgentProcess,
    base: Release,
    double: ControllerDouble,
    models_dir: Path,
) -> None:
    candidate = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    # A candidate signed by the deployment key, not the release key: refused, not fetched.
    shadow(double, base, candidate, signer=Role.DEPLOYMENT)
    refused = double.wait_for_event(DEVICE, "deployment_refused")
    assert "shadow" in refused.details["error"]
    assert not (agent.data_dir / "shadow" / "affine").exists()

    shadow(double, base, candidate, until=timedelta(seconds=4))
    double.wait_for_event(DEVICE, "shadow_started")
    stopped = double.wait_for_event(DEVICE, "shadow_stopped", timeout_s=30)
    assert stopped.reason == "until"
    assert not (agent.data_dir / "shadow" / "affine").exists()

    # The device owner's limit: 0 turns shadows off on this device.
    agent.stop()
    agent.start(shadow_max_cpu_fraction=0.0)
    shadow(double, base, candidate)
    failed = double.wait_for_event(DEVICE, "shadow_failed")
    assert failed.reason == "shadow_disabled"
    assert not (agent.data_dir / "shadow" / "affine").exists()
