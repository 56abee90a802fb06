"""Documents signed on demand, in the spirit of python-tuf's repository simulator."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from protocol import (
    Artifact,
    CheckBundleRef,
    Deployment,
    Envelope,
    Release,
    Role,
    RuntimeRequirements,
    SigningKey,
    TensorSpec,
    TrustRoot,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ARTIFACT_BYTES = b"not really a model, but bytes with a hash"
BUNDLE_BYTES = b"not really a check bundle either"


@dataclass
class Keyring:
    """One or more keys per role, a threshold per role, and documents signed with them."""

    keys: dict[Role, list[SigningKey]] = field(
        default_factory=lambda: {role: [SigningKey.generate()] for role in Role}
    )
    thresholds: dict[Role, int] = field(default_factory=lambda: dict.fromkeys(Role, 1))
    version: int = 1

    def trust_root(self) -> TrustRoot:
        return TrustRoot.build(
            version=self.version,
            expires=NOW + timedelta(days=365),
            roles={
                role: ([key.public_key for key in self.keys[role]], self.thresholds[role])
                for role in Role
            },
        )

    def signed_trust_root(self) -> Envelope:
        return self.trust_root().sign(self.keys[Role.ROOT])

    def sign(self, document: Release | Deployment, role: Role) -> Envelope:
        return document.sign(self.keys[role])


def make_release(**overrides: Any) -> Release:
    fields: dict[str, Any] = {
        "model": "digits",
        "version": 3,
        "artifact": Artifact(
            sha256=hashlib.sha256(ARTIFACT_BYTES).hexdigest(),
            length=len(ARTIFACT_BYTES),
            format="onnx",
            filename="model.onnx",
        ),
        "runtime": RuntimeRequirements(name="onnxruntime", opset=17),
        "inputs": [TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
        "outputs": [TensorSpec(name="y", datatype="FP32", shape=[-1, 2])],
        "check_bundle": CheckBundleRef(
            sha256=hashlib.sha256(BUNDLE_BYTES).hexdigest(), length=len(BUNDLE_BYTES)
        ),
        "created_at": NOW,
    }
    fields.update(overrides)
    return Release(**fields)


def make_deployment(release_envelope: Envelope, **overrides: Any) -> Deployment:
    fields: dict[str, Any] = {
        "device_id": "cam-berlin-0001",
        "model": "digits",
        "sequence": 7,
        "issued_at": NOW,
        "expires": NOW + timedelta(hours=1),
        "release": release_envelope.to_json_obj(),
    }
    fields.update(overrides)
    return Deployment(**fields)


@pytest.fixture
def keyring() -> Keyring:
    return Keyring()
