"""Continuous delivery on real agents, a real broker, a real controller and a real MLflow
server: a model logged to MLflow and imported into a channel reaches every matching device
with no further command; a worse one imported the same way stops with its reason in
``edgefleet channel show``; with approval required nothing ships until an operator
approves."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator.demo_models import build_digits_model, build_mislabeled_digits_model
from tests.controller.mlflow_server import STARTUP_TIMEOUT_S, MlflowServer, running_mlflow

from .conftest import Fleet
from .harness import active_version_of
from .test_drift_is_not_a_release_gate import GATES, PROBATION, digits_requests
from .test_operator_cli import edgefleet

pytestmark = pytest.mark.timeout(480 + STARTUP_TIMEOUT_S)

WAIT_S = 240.0


@pytest.fixture
def mlflow(tmp_path: Path) -> Iterator[tuple[MlflowServer, Any]]:
    """A real MLflow server, and its client library pointed at it."""
    with running_mlflow(tmp_path / "mlflow") as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        patch.setenv("MLFLOW_TRACKING_URI", server.url)
        import mlflow as client

        client.set_tracking_uri(server.url)
        yield server, client


def log_to_mlflow(client: Any, name: str, model: Path, validation: Path) -> str:
    """What a training job does: log the model and its labeled validation set in a run
    (the set named ``validation.npz`` beside the model) and register a version."""
    directory = model.parent / f"run-{model.stem}"
    directory.mkdir()
    (directory / "model.onnx").write_bytes(model.read_bytes())
    (directory / "validation.npz").write_bytes(validation.read_bytes())
    client.set_experiment("digits-training")
    with client.start_run() as run:
        client.log_params({"hidden": 32, "source": model.stem})
        client.log_metrics({"val_accuracy": 0.95})
        client.log_artifacts(str(directory), artifact_path="model")
    registry = client.MlflowClient()
    if not registry.search_registered_models(f"name = '{name}'"):
        registry.create_registered_model(name)
    version = registry.create_model_version(
        name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    return f"models:/{name}/{version.version}"


def import_into(fleet: Fleet, server: MlflowServer, source: str, channel: str) -> str:
    """``edgefleet model import`` into a channel; the pipeline's id."""
    imported = edgefleet(
        fleet,
        "model", "import", source, "--mlflow-uri", server.url, "--name", "digits",
        "--channel", channel, "--allow-signature-change", "--json",
    )  # fmt: skip
    return str(imported["pipeline"])


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
    fleet: Fleet, tmp_path: Path, mlflow: tuple[MlflowServer, Any]
) -> None:
    server, client = mlflow
    model, validation = build_digits_model(tmp_path)
    mislabeled = build_mislabeled_digits_model(tmp_path)
    fleet.enroll(3, labels="site=berlin", prefix="ber")
    fleet.enroll(1, labels="site=lab", prefix="lab")
    fleet.start_agents()
    for agent in fleet.agents:
        agent.start_traffic("digits", bodies=digits_requests("as_is"), interval_s=0.05)
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
    good = log_to_mlflow(client, "digits-classifier", model, validation)
    shipped = wait_pipeline(
        fleet, import_into(fleet, server, good, "berlin"), ("completed", "stopped")
    )
    assert shipped["status"] == "completed", shipped
    variant = shipped["release_version"]
    assert variant == 2
    assert {serving(fleet, a.device_id) for a in berlin} == {variant}
    assert serving(fleet, lab.device_id) is None

    # A worse one (labels shifted by one) stops at the quality gate: nothing is released.
    bad = log_to_mlflow(client, "digits-classifier", mislabeled, validation)
    worse = wait_pipeline(
        fleet, import_into(fleet, server, bad, "berlin"), ("completed", "stopped")
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
    signed = json.loads(base64.b64decode(release["envelope"]["payload"]))
    provenance = signed["provenance"]
    assert provenance["channel"] == "lab"
    assert provenance["pipeline"] == pipeline_id
    assert provenance["approved_by"] == approved["approved_by"]
