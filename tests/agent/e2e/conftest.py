"""An agent process, a controller double and a real Mosquitto per test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from protocol import Deployment, Envelope, Release
from tests.agent.e2e.agent_process import AgentProcess
from tests.agent.e2e.double import ControllerDouble
from tests.agent.e2e.models import affine_model, release_of
from tests.brokers import BrokerEndpoint

DEVICE = "dev-0001"


@pytest.fixture
def double(mosquitto: BrokerEndpoint, topic_prefix: str) -> Iterator[ControllerDouble]:
    with (
        ControllerDouble(mosquitto, topic_prefix) as controller,
        controller.artifacts.running() as url,
    ):
        controller.url = url
        yield controller


@pytest.fixture
def agent(
    tmp_path: Path, double: ControllerDouble, mosquitto: BrokerEndpoint, topic_prefix: str
) -> Iterator[AgentProcess]:
    process = AgentProcess(
        tmp_path / "device",
        device_id=DEVICE,
        broker=mosquitto,
        prefix=topic_prefix,
        controller_url=double.url,
        trust_root=double.keyring.signed_trust_root().to_bytes(),
    )
    yield process
    if process.alive():
        process.stop()


def deploy(double: ControllerDouble, release: Release, **overrides: Any) -> Envelope:
    envelope = double.deployment(DEVICE, release, now=datetime.now(UTC), **overrides)
    double.publish_desired(DEVICE, envelope)
    return envelope


def sequence_of(envelope: Envelope) -> int:
    return Deployment.from_unverified_envelope(envelope).sequence


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    return directory


@pytest.fixture
def base(models_dir: Path, double: ControllerDouble, agent: AgentProcess) -> Release:
    """Model A, deployed and committed: the device has a working model to keep."""
    release = release_of(double, affine_model(models_dir / "a.onnx", 1.0), version=1)
    agent.start()
    final = double.wait_for_final(DEVICE, sequence_of(deploy(double, release)))
    assert final.type == "committed", double.event_summary()
    return release
