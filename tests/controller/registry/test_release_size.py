"""A signed release and a deployment stay small whatever the model (docs/protocol.md §6).

The image model here is the one whose release used to fail with a 500: Inception v2 from
the onnx package, one 1x3x224x224 FP32 input, whose inline golden cases made a 4.3 MB
release envelope. Its golden cases now travel in the check bundle.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.tokens import Role
from protocol import (
    MAX_RELEASE_ENVELOPE_BYTES,
    Deployment,
    Envelope,
    ProbationPolicy,
    Release,
    verify_document,
)
from tensors import read_check_bundle
from tests.controller.conftest import bearer, ctx
from tests.controller.registry.test_registry import push
from tests.model_factory import onnx_reference_models

MAX_DEPLOYMENT_ENVELOPE_BYTES = 16 * 1024


@pytest.mark.parametrize("network", ["light_inception_v2"])
def test_image_model_release_and_deployment_stay_under_their_bounds(
    app: FastAPI, client: TestClient, tokens: dict[Role, str], network: str
) -> None:
    model = next(path for path in onnx_reference_models() if path.stem == network)
    operator = tokens[Role.OPERATOR]
    pushed = push(client, operator, "vision", model)
    assert pushed["http_status"] == 201, pushed

    response = client.post("/api/v1/models/vision/versions/1/release", headers=bearer(operator))
    assert response.status_code == 201, response.text
    envelope = Envelope.from_json_obj(response.json()["envelope"])
    release = verify_document(envelope, Release, ctx(app).signer.trust_root)
    release_bytes = len(envelope.to_bytes())

    stored = ctx(app).store.get(release.check_bundle.sha256)
    bundle = read_check_bundle(stored.path)
    assert next(iter(bundle.golden[0].inputs.values())).shape == (1, 3, 224, 224)
    assert stored.size_bytes == release.check_bundle.length > 600_000

    # The largest deployment the controller signs: longest device id, model and rollout id.
    now = datetime.now(UTC)
    deployment = Deployment(
        device_id="d" * 64,
        model="m" * 128,
        sequence=2**40,
        issued_at=now,
        expires=now + timedelta(days=7),
        release=envelope.to_json_obj(),
        rollback=True,
        probation=ProbationPolicy(latency_budget_ms=250.0),
        rollout_id="r" * 36,
    ).sign([ctx(app).signer.deployment_key])
    deployment_bytes = len(deployment.to_bytes())

    print(f"{network}: release {release_bytes} B, deployment {deployment_bytes} B")
    assert release_bytes <= MAX_RELEASE_ENVELOPE_BYTES
    assert deployment_bytes < MAX_DEPLOYMENT_ENVELOPE_BYTES
