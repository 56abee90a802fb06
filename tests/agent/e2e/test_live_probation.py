"""Serving and probation end to end: applications call the agent while models change.

A steady client keeps calling the local Open Inference Protocol API through activation,
probation and rollback; not one of its requests may fail. A model that behaves on its
golden inputs but turns out slower, or emits NaN, on live traffic is rolled back by the
device itself, and the verdict event carries the numbers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from protocol import ProbationPolicy, Release
from tests.agent.e2e.agent_process import AgentProcess
from tests.agent.e2e.conftest import DEVICE, deploy, sequence_of
from tests.agent.e2e.double import ControllerDouble
from tests.agent.e2e.models import log1p_model, release_of, slow_model
from tests.agent.e2e.test_update_path import assert_serving

LIVE_INPUT = [-5.0, -5.0, -5.0, -5.0]  # NaN for log(x + 1): golden inputs never go there
POLICY = ProbationPolicy(window_s=3, min_requests=20, max_extension_s=10)


def infer(client: httpx.Client, url: str, row: list[float]) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": row}]}
    return client.post(f"{url}/v2/models/affine/infer", json=body)


@dataclass
class SteadyClient:
    url: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    response = infer(client, self.url, LIVE_INPUT)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{response.status_code}: {response.text}")


@pytest.fixture
def steady(agent: AgentProcess, base: Release) -> Iterator[SteadyClient]:
    client = SteadyClient(agent.api_url)
    thread = threading.Thread(target=client.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while client.ok < 50 and time.monotonic() < deadline:  # a baseline for the old model
        time.sleep(0.05)
    yield client
    client.stop.set()
    thread.join(timeout=30)


def test_an_application_gets_the_models_outputs_over_the_local_api(
    agent: AgentProcess, base: Release
) -> None:
    with httpx.Client() as client:
        response = infer(client, agent.api_url, [1.0, 2.0, 3.0, 4.0])
        metadata = client.get(f"{agent.api_url}/v2/models/affine").json()
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]
    assert metadata["platform"] == "onnxruntime"


def verdict_of(double: ControllerDouble, sequence: int) -> dict[str, object]:
    events = [
        e
        for e in double.device_events(DEVICE)
        if e.type == "probation_verdict" and e.deployment_sequence == sequence
    ]
    assert len(events) == 1, double.event_summary()
    return {"reason": events[0].reason, **events[0].details}


def test_model_slower_on_live_traffic_is_rolled_back_without_a_failed_request(
    double: ControllerDouble,
    agent: AgentProcess,
    base: Release,
    models_dir: Path,
    steady: SteadyClient,
) -> None:
    slow = release_of(double, slow_model(models_dir / "slow.onnx"), version=2)
    sequence = sequence_of(deploy(double, slow, probation=POLICY))
    final = double.wait_for_final(DEVICE, sequence, timeout_s=120)
    assert (final.type, final.reason) == ("rolled_back", "p95_latency_ratio")
    verdict = verdict_of(double, sequence)
    assert verdict["outcome"] == "rollback"
    assert float(str(verdict["p95_latency_ratio"])) > POLICY.max_p95_latency_ratio
    assert_serving(agent, base)
    assert steady.failures == []
    assert steady.ok > 100


def test_model_emitting_nan_on_live_traffic_is_rolled_back_without_a_failed_request(
    double: ControllerDouble,
    agent: AgentProcess,
    base: Release,
    models_dir: Path,
    steady: SteadyClient,
) -> None:
    nan_live = release_of(double, log1p_model(models_dir / "log1p.onnx"), version=2)
    sequence = sequence_of(deploy(double, nan_live, probation=POLICY))
    final = double.wait_for_final(DEVICE, sequence, timeout_s=120)
    assert (final.type, final.reason) == ("rolled_back", "nonfinite_rate")
    assert float(str(verdict_of(double, sequence)["nonfinite_rate"])) > 0
    assert_serving(agent, base)
    assert steady.failures == []
