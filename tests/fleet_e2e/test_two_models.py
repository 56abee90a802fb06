"""Two models rolled out to the same devices at the same time (issue 14's done-when).

Every device runs ``affine`` v1 and serves traffic to it. Then two rollouts start
together: ``vision`` (SqueezeNet from the onnx package, 1x3x224x224 frames, its first
release) and a bad ``affine`` v2 (finite on its validation data, NaN on live rows). The
bad one stops at its canary, which rolls back by itself; the vision rollout goes on
through its waves regardless. Every device ends serving vision's new release and
affine's old one, and no request to either model fails on the way.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import GATES, MODEL, PROBATION, WAIT_S, Fleet, ModelFiles
from .image_models import live_frame, live_request, squeezenet, validation_frames
from .test_rollouts import committed, outcomes

pytestmark = pytest.mark.timeout(420)

VISION = "vision"
# Room for 3 agents decoding 3 MB JSON frames beside the affine traffic on 2 cores.
VISION_PROBATION = PROBATION | {"min_requests": 8, "max_extension_s": 30.0}
VISION_GATES = GATES | {"min_health_requests": 16}


def test_two_models_roll_out_at_once_and_the_bad_one_stops_alone(
    fleet: Fleet, model_files: ModelFiles, tmp_path: Path
) -> None:
    fleet.enroll(3)
    fleet.start_agents()
    baseline = fleet.install_baseline(model_files)  # affine v1 everywhere, with traffic
    frames = [live_request(live_frame(seed)) for seed in range(3)]
    for agent in fleet.agents:
        agent.start_traffic(VISION, bodies=frames, interval_s=0.3)
    vision = fleet.api.push_and_release(
        VISION, squeezenet(), validation_frames(tmp_path / "frames.npz")
    )
    bad = fleet.api.push_and_release(MODEL, model_files.nan_live, model_files.nan_live_validation)

    vision_rollout = fleet.api.rollout(
        f"{VISION}:{vision}",
        waves="1,100%",
        soak="1s",
        probation=VISION_PROBATION,
        gates=VISION_GATES,
    )
    bad_rollout = fleet.api.rollout(
        f"{MODEL}:{bad}", waves="1,100%", soak="1s", probation=PROBATION, gates=GATES
    )
    bad_status = fleet.api.wait_rollout(bad_rollout, ("aborted",), WAIT_S, fleet.context)
    vision_status = fleet.api.wait_rollout(vision_rollout, ("completed",), WAIT_S, fleet.context)

    assert outcomes(fleet, bad_rollout) == {"rolled_back": 1}, bad_status
    assert bad_status["last_good"] == baseline
    assert committed(fleet, vision_rollout) == 3, vision_status
    baseline_version = int(baseline.split(":")[1])
    for agent in fleet.agents:
        assert fleet.api.active_version(agent.device_id, VISION) == vision
        assert fleet.api.active_version(agent.device_id, MODEL) == baseline_version
    for agent in fleet.agents:
        detail = fleet.api.device(agent.device_id)
        # Statistics arrive per model, each under the release it was measured on.
        measured = {(w["model_name"], w["version"]) for w in detail["telemetry"]}
        assert {(VISION, vision), (MODEL, baseline_version)} <= measured, measured
        for model in (VISION, MODEL):
            traffic = agent.traffics[model]
            assert traffic.ok > 0, (agent.device_id, model)
            assert traffic.failures == [], (agent.device_id, model, traffic.failures[:3])
