"""An image model through the whole path: push, release, rollout in waves, serve, commit.

SqueezeNet from the onnx package (1x3x224x224 frames, 1000 classes) with a validation
set of frames, released with its check bundle, rolled out to real agents that serve it
over the inference API to applications sending live frames unlike the validation set;
then a broken copy that is finite on every validation frame and NaN on live ones, which
the canary rolls back before any other device sees it, and which a shadow stage stops
before any device serves it. Drift limits are the defaults.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from .conftest import Fleet
from .image_models import (
    INPUT,
    OUTPUT,
    live_frame,
    live_request,
    nan_on_live_frames,
    squeezenet,
    validation_frames,
)

pytestmark = pytest.mark.timeout(420)

MODEL = "vision"
# Short windows, and room for 3 agents decoding 3 MB JSON frames on 2 cores; drift limits
# are left at their defaults on purpose.
PROBATION = {
    "window_s": 3.0,
    "min_requests": 8,
    "max_extension_s": 30.0,
    "max_p95_latency_ratio": 4.0,
}
GATES = {"max_p95_latency_ratio": 4.0, "min_health_requests": 16}


def served_output(fleet: Fleet, frame: np.ndarray) -> np.ndarray:
    agent = fleet.agents[0]
    response = httpx.post(
        f"http://127.0.0.1:{agent.inference_port}/v2/models/{MODEL}/infer",
        content=live_request(frame),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    assert output["name"] == OUTPUT
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def test_image_model_ships_in_waves_and_a_broken_one_stops_at_the_canary(
    fleet: Fleet, tmp_path: Path
) -> None:
    fleet.enroll(3)
    fleet.start_agents()
    frames = [live_request(live_frame(seed)) for seed in range(3)]
    for agent in fleet.agents:
        agent.start_traffic(MODEL, bodies=frames, interval_s=0.3)
    validation = validation_frames(tmp_path / "frames.npz")

    # push -> variant -> release: the variant is made from the folded graph and gated
    # like any other (dynamic INT8 convolutions measured 4x slower here: rejected); the
    # FP32 parent is what ships.
    pushed = fleet.api.client.push(MODEL, squeezenet(), validation=validation)
    variant = fleet.api.client.quantize(MODEL, int(pushed["version"]), "int8-dynamic")
    assert variant["status"] in ("accepted", "rejected"), variant
    assert variant["report"]["latency_ms_parent"] > 1.0
    assert any("folded into initializers" in note for note in variant["notes"]), variant
    good = int(pushed["version"])
    fleet.api.client.release(MODEL, good)
    body = {"probation": PROBATION, "gates": GATES, "soak": "2s", "waves": "1,100%"}
    rollout_id = fleet.api.rollout(f"{MODEL}:{good}", **body)
    status = fleet.api.wait_rollout(rollout_id, ("completed",), 300, fleet.context)

    committed = sum(wave["outcomes"].get("committed", 0) for wave in status["waves"])
    assert committed == 3, status
    assert all(fleet.api.active_version(a.device_id, MODEL) == good for a in fleet.agents)
    frame = live_frame(99)
    expected = ort.InferenceSession(str(squeezenet())).run(None, {INPUT: frame})[0]
    np.testing.assert_allclose(served_output(fleet, frame), expected, rtol=1e-5, atol=1e-6)
    # No frame failed while the model arrived (404 before the first model is not a failure).
    assert all(a.traffic is not None and not a.traffic.failures for a in fleet.agents)

    broken = fleet.api.push_and_release(
        MODEL, nan_on_live_frames(tmp_path / "vision-nan.onnx"), validation
    )
    rollout_id = fleet.api.rollout(f"{MODEL}:{broken}", **body)
    status = fleet.api.wait_rollout(rollout_id, ("aborted",), 300, fleet.context)

    outcomes = {k: v for wave in status["waves"] for k, v in wave["outcomes"].items()}
    assert outcomes == {"rolled_back": 1}, status
    assert status["last_good"] == f"{MODEL}:{good}"
    assert all(fleet.api.active_version(a.device_id, MODEL) == good for a in fleet.agents)
    assert all(a.traffic is not None and a.traffic.ok > 0 for a in fleet.agents)

    # The same broken copy behind a shadow stage: two devices run it beside SqueezeNet on
    # copies of live frames, see its NaN, and it stops there: no device ever serves it.
    shadow = {"devices": "2", "duration": "3s", "min_samples": 6, "max_latency_ratio": 100.0}
    failures = [len(a.traffic.failures) for a in fleet.agents if a.traffic is not None]
    rollout_id = fleet.api.rollout(f"{MODEL}:{broken}", shadow=shadow, **body)
    status = fleet.api.wait_rollout(rollout_id, ("aborted",), 300, fleet.context)

    gates = {g["name"]: g for g in status["shadow"]["judgement"]["gates"]}
    assert gates["shadow_nonfinite_rate"]["value"] == 1.0, gates
    assert not gates["shadow_nonfinite_rate"]["passed"]
    assert all(wave["outcomes"] == {} for wave in status["waves"]), status
    assert all(fleet.api.active_version(a.device_id, MODEL) == good for a in fleet.agents)
    assert [len(a.traffic.failures) for a in fleet.agents if a.traffic is not None] == failures
