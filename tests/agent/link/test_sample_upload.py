"""Captured samples from a device's queue to the controller over real HTTP, and back out
as a dataset: the device's token, retries while the controller is away, deletion once
accepted, and an image model's frames through capture → upload → export → numpy.load."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from agent.clock import SystemClock
from agent.config import AgentConfig
from agent.link.sample_upload import upload_samples
from agent.stats.capture import CaptureKeeper
from agent.stats.recorder import StatsRecorder
from controller.cli.main import app as cli
from controller.db import session_scope
from controller.devices.enrollment import create_enrollment_token, enroll_device
from controller.samples.capture import order_capture
from controller.samples.tables import SampleRecord
from controller.tokens import Role
from tensors import load_backend
from tests.fleet_e2e.image_models import FRAME_SHAPE, INPUT, OUTPUT, live_frame, squeezenet
from tests.security.http_server import ServedController, controller_settings, served

LOW = np.array([[0.4, 0.3, 0.3]], dtype=np.float32)


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ServedController]:
    with served(controller_settings(tmp_path / "controller")) as running:
        yield running


def _device(
    controller: ServedController,
    directory: Path,
    url: str | None = None,
    model: str = "digits",
) -> AgentConfig:
    """An enrolled device for which the controller ordered capture of ``model``."""
    ctx = controller.app.state.ctx
    with session_scope(ctx.engine) as session:
        token, _row = create_enrollment_token(
            session, labels={}, device_id="cam-1", ttl_s=60, actor="test"
        )
    with session_scope(ctx.engine) as session:
        enrollment = enroll_device(
            session,
            token=token,
            device_id=None,
            settings=ctx.settings,
            trust_root_envelope=ctx.signer.trust_root_envelope,
        )
    now = datetime.now(UTC)
    with session_scope(ctx.engine) as session:
        order_capture(
            session,
            ctx.signer,
            ["cam-1"],
            model=model,
            below_confidence=0.5,
            per_hour=100,
            max_bytes=64 * 1024 * 1024,
            until=now + timedelta(hours=1),
            source="test",
            now=now,
        )
    return AgentConfig(
        device_id="cam-1",
        data_dir=directory / "data",
        trust_root=directory / "trust-root.json",
        controller_url=url or f"http://127.0.0.1:{controller.port}",
        controller_token=enrollment.controller_token,
    )


def _keeper(config: AgentConfig, model: str) -> CaptureKeeper:
    keeper = CaptureKeeper(config.data_dir / "capture", device_id="cam-1", clock=SystemClock())
    keeper.order(
        {
            "model": model,
            "below_confidence": 0.5,
            "per_hour": 100,
            "max_bytes": 64 * 1024 * 1024,
            "until": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        }
    )
    return keeper


def _stored(controller: ServedController) -> list[SampleRecord]:
    with session_scope(controller.app.state.ctx.engine) as session:
        return list(session.exec(select(SampleRecord)).all())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_controller_keeps_the_queue_until_it_accepts(
    controller: ServedController, tmp_path: Path
) -> None:
    away = _device(controller, tmp_path, url=f"http://127.0.0.1:{_closed_port()}")
    keeper = _keeper(away, "digits")
    recorder = StatsRecorder(reference=None, now_s=0.0)
    recorder.capture = keeper.capture_for("digits", 1)
    for seed in range(3):
        x = np.random.default_rng(seed).normal(size=(1, 4)).astype(np.float32)
        recorder.record(latency_s=0.001, inputs={"x": x}, outputs={"probs": LOW}, error=False)
    assert keeper.flush() == 3

    result = upload_samples(away, keeper)
    assert (result.accepted, result.left) == (0, 3)
    assert result.stopped is not None
    assert len(keeper.queued()) == 3
    assert _stored(controller) == []

    back = away.model_copy(update={"controller_url": f"http://127.0.0.1:{controller.port}"})
    result = upload_samples(back, keeper)
    assert (result.accepted, result.refused, result.left) == (3, 0, 0)
    assert keeper.queued() == []  # deleted on the device once accepted
    assert len(_stored(controller)) == 3


def test_wrong_token_keeps_the_samples(controller: ServedController, tmp_path: Path) -> None:
    config = _device(controller, tmp_path).model_copy(update={"controller_token": "wrong"})
    keeper = _keeper(config, "digits")
    capture = keeper.capture_for("digits", 1)
    assert capture is not None
    capture.offer({"x": np.zeros((1, 4), np.float32)}, {"probs": LOW}, 0.4)
    keeper.flush()
    result = upload_samples(config, keeper)
    assert result.stopped == "controller answered 401"
    assert len(keeper.queued()) == 1


def test_image_frames_captured_uploaded_exported_and_reloaded(
    controller: ServedController, tmp_path: Path
) -> None:
    """SqueezeNet's real 1x3x224x224 float32 frames (600 KiB each), end to end but the MQTT."""
    config = _device(controller, tmp_path, model="squeezenet")
    keeper = _keeper(config, "squeezenet")
    backend = load_backend(squeezenet(), "onnx")
    recorder = StatsRecorder(reference=None, now_s=0.0)
    recorder.capture = keeper.capture_for("squeezenet", 7)
    frames = [live_frame(seed) for seed in range(4)]
    for frame in frames:
        outputs = backend.run({INPUT: frame})
        recorder.record(latency_s=0.01, inputs={INPUT: frame}, outputs=outputs, error=False)
    assert keeper.flush() == 4  # an untrained classifier is never confident
    assert upload_samples(config, keeper).accepted == 4

    out = tmp_path / "dataset.npz"
    viewer = controller.token(Role.VIEWER)
    answer = CliRunner().invoke(
        cli,
        ["samples", "export", "--model", "squeezenet", "--since", "1h", str(out)],
        env={"EDGEFLEET_URL": f"http://127.0.0.1:{controller.port}", "EDGEFLEET_TOKEN": viewer},
    )
    assert answer.exit_code == 0, answer.output
    with np.load(out, allow_pickle=False) as dataset:
        inputs = dataset[f"input:{INPUT}"]
        assert inputs.shape == (4, *FRAME_SHAPE[1:])
        assert inputs.dtype == np.float32
        assert dataset[f"output:{OUTPUT}"].shape == (4, 1000, 1, 1)
        assert list(dataset["device_id"]) == ["cam-1"] * 4
        assert list(dataset["release_version"]) == [7] * 4
        assert set(dataset["reason"]) == {"low_confidence"}
        # Oldest first: the frames in the order they were served.
        for index, frame in enumerate(frames):
            np.testing.assert_array_equal(inputs[index], frame[0])
