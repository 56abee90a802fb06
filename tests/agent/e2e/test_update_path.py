"""The update path end to end: a real agent process, Mosquitto, HTTP and sandbox.

Each attack test asserts the refusal the device reports and what is left on disk: the
model it serves and, for refused deployments, its trust state byte for byte.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.backends import physical_cores
from protocol import ProbationPolicy, Release, Role, SigningKey, canonical_json, sign_envelope
from tests.agent.e2e.agent_process import AgentProcess
from tests.agent.e2e.conftest import DEVICE, deploy, sequence_of
from tests.agent.e2e.double import ControllerDouble
from tests.agent.e2e.models import affine_model, nan_model, release_of, slow_model
from tests.check_bundles import ref_of


def serving(agent: AgentProcess) -> str | None:
    current = agent.current_model_dir()
    return current.name.removeprefix("sha256-") if current else None


def assert_serving(agent: AgentProcess, release: Release) -> None:
    assert serving(agent) == release.artifact.sha256
    model = agent.current_model_dir()
    assert model is not None
    data = (model / release.artifact.filename).read_bytes()
    assert hashlib.sha256(data).hexdigest() == release.artifact.sha256


def test_deployment_is_fetched_checked_activated_and_committed(
    double: ControllerDouble, agent: AgentProcess, base: Release
) -> None:
    assert_serving(agent, base)
    double.wait_for(lambda: DEVICE in double.states, "a state report")
    state = double.states[DEVICE]
    assert state.online
    assert state.inference_threads == physical_cores()  # "auto", the default
    active = double.active(DEVICE, base.model)
    assert active is not None
    assert active.sha256 == base.artifact.sha256
    phases = [e.phase for e in double.device_events(DEVICE) if e.type == "phase"]
    assert phases[:6] == ["idle", "fetching", "verifying", "staged", "activating", "probation"]


def refused(double: ControllerDouble, reason: str) -> None:
    event = double.wait_for_event(DEVICE, "deployment_refused")
    assert event.reason == reason, double.event_summary()


def test_deployment_signed_by_an_unknown_key_is_refused(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    trust_before = agent.trust_file_bytes()
    double.keyring.keys[Role.DEPLOYMENT] = [SigningKey.generate()]
    deploy(double, release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2))
    refused(double, "bad_signature")
    assert agent.trust_file_bytes() == trust_before
    assert_serving(agent, base)


def test_deployment_signed_by_the_release_key_is_refused(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    trust_before = agent.trust_file_bytes()
    release = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    deploy(double, release, signer=Role.RELEASE)
    refused(double, "bad_signature")
    assert agent.trust_file_bytes() == trust_before
    assert_serving(agent, base)


def test_deployment_for_another_device_is_refused(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    trust_before = agent.trust_file_bytes()
    release = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    # Signed for another device, but published on this device's topic.
    double.publish_desired(
        DEVICE, double.deployment("someone-else", release, now=datetime.now(UTC))
    )
    refused(double, "wrong_device")
    assert agent.trust_file_bytes() == trust_before
    assert_serving(agent, base)


def test_replayed_older_deployment_is_refused_also_after_a_restart(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    old = double.deployment(DEVICE, base, now=datetime.now(UTC))  # sequence 2, kept aside
    newer = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    assert double.wait_for_final(DEVICE, sequence_of(deploy(double, newer))).type == "committed"
    trust_before = agent.trust_file_bytes()

    double.publish_desired(DEVICE, old)
    refused(double, "replayed_deployment")
    agent.stop()
    agent.start()
    double.publish_desired(DEVICE, old)
    double.wait_for(
        lambda: sum(e.type == "deployment_refused" for e in double.device_events(DEVICE)) >= 2,
        "a second refusal after the restart",
    )
    assert agent.trust_file_bytes() == trust_before
    assert_serving(agent, newer)


def test_expired_deployment_is_refused_even_with_the_clock_moved_back(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    agent.stop()
    agent.start(clock_offset_s=-7200.0)  # the device clock now says two hours ago
    trust_before = agent.trust_file_bytes()
    release = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    issued = datetime.now(UTC) - timedelta(hours=3)
    # Valid by the device's wrong clock, expired by the time floor its last deployment set.
    deploy(double, release, issued_at=issued, expires=issued + timedelta(hours=2))
    refused(double, "expired_deployment")
    assert agent.trust_file_bytes() == trust_before
    assert_serving(agent, base)


def test_release_downgrade_without_rollback_is_refused(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    v5 = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=5)
    assert double.wait_for_final(DEVICE, sequence_of(deploy(double, v5))).type == "committed"
    trust_before = agent.trust_file_bytes()
    v4 = release_of(double, affine_model(models_dir / "c.onnx", 3.0), version=4)
    deploy(double, v4)
    refused(double, "downgrade")
    assert agent.trust_file_bytes() == trust_before
    assert_serving(agent, v5)
    ordered = deploy(double, v4, rollback=True)
    assert double.wait_for_final(DEVICE, sequence_of(ordered)).type == "committed"
    assert_serving(agent, v4)


@pytest.mark.parametrize("filename", ["../escape.onnx", "/etc/model.onnx", "a\u0000b.onnx"])
def test_release_with_a_file_name_that_escapes_is_refused(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path, filename: str
) -> None:
    trust_before = agent.trust_file_bytes()
    good = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    obj = good.to_json_obj()
    obj["artifact"]["filename"] = filename
    # Signed by the real release key: only the device's own checks stand in the way.
    release_envelope = sign_envelope(
        Release.PAYLOAD_TYPE, canonical_json(obj), double.keyring.keys[Role.RELEASE]
    )
    now = datetime.now(UTC)
    deployment = double.deployment(DEVICE, good, now=now, release_envelope=release_envelope)
    double.publish_desired(DEVICE, deployment)
    event = double.wait_for_event(DEVICE, "deployment_refused")
    assert event.reason in ("malformed_document", "unsafe_file_name"), event
    assert agent.trust_file_bytes() == trust_before
    assert_serving(agent, base)
    assert not any(
        p.name == Path(filename).name for p in agent.data_dir.rglob("*") if "\0" not in filename
    )


def failed_with(double: ControllerDouble, envelope_sequence: int, reason: str) -> None:
    final = double.wait_for_final(DEVICE, envelope_sequence)
    assert (final.type, final.reason) == ("failed", reason), double.event_summary()


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("tampered", "hash_mismatch"), ("oversize", "download_too_large")],
)
def test_bad_download_fails_and_keeps_the_current_model(
    double: ControllerDouble,
    agent: AgentProcess,
    base: Release,
    models_dir: Path,
    mode: str,
    reason: str,
) -> None:
    release = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    double.artifacts.mode = mode
    failed_with(double, sequence_of(deploy(double, release)), reason)
    assert_serving(agent, base)
    assert list((agent.data_dir / "updates" / base.model / "staging").iterdir()) == []


def test_check_bundle_is_kept_beside_the_committed_model(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    release = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    final = double.wait_for_final(DEVICE, sequence_of(deploy(double, release)))
    assert final.type == "committed", double.event_summary()
    model_dir = agent.current_model_dir()
    assert model_dir is not None
    bundle = model_dir / f"check-bundle-{release.check_bundle.sha256}.npz"
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == release.check_bundle.sha256


def test_tampered_check_bundle_fails_and_keeps_the_current_model(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    release = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    digest = release.check_bundle.sha256
    genuine = double.artifacts.blobs[digest]
    double.artifacts.blobs[digest] = bytes(b ^ 0x01 for b in genuine[:16]) + genuine[16:]
    failed_with(double, sequence_of(deploy(double, release)), "hash_mismatch")
    assert_serving(agent, base)
    assert list((agent.data_dir / "updates" / base.model / "staging").iterdir()) == []


def test_check_bundle_that_does_not_read_fails_the_check(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    # Correctly hashed and signed, but not a bundle: refused by the sandboxed check.
    garbage = b"PK\x03\x04" + bytes(200)
    double.artifacts.add(garbage, bundle=True)
    release = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    release = release.model_copy(update={"check_bundle": ref_of(garbage)})
    failed_with(double, sequence_of(deploy(double, release)), "check_bundle_invalid")
    assert_serving(agent, base)


def test_cut_download_resumes_with_range_and_commits(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    release = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    double.artifacts.mode = "cut_once"
    final = double.wait_for_final(DEVICE, sequence_of(deploy(double, release)))
    assert final.type == "committed", double.event_summary()
    assert any("Range" in request for request in double.artifacts.requests)
    assert_serving(agent, release)


def test_trickling_server_hits_the_download_deadline(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    agent.stop()
    agent.start(download_min_deadline_s=2.0, download_min_rate_bytes_per_s=10_000_000)
    release = release_of(double, affine_model(models_dir / "b.onnx", 2.0), version=2)
    double.artifacts.mode = "trickle"
    failed_with(double, sequence_of(deploy(double, release)), "download_deadline")
    assert_serving(agent, base)


def test_malformed_model_fails_the_sandboxed_load(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    junk = models_dir / "junk.onnx"
    junk.write_bytes(b"\x08\x07" + bytes(range(256)) * 8)
    release = release_of(double, junk, version=2, expected=base_expected())
    failed_with(double, sequence_of(deploy(double, release)), "model_load_failed")
    assert_serving(agent, base)


def test_model_that_outputs_nan_fails_the_golden_check(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    release = release_of(
        double, nan_model(models_dir / "nan.onnx"), version=2, expected=base_expected()
    )
    failed_with(double, sequence_of(deploy(double, release)), "nonfinite_output")
    assert_serving(agent, base)


def test_model_ten_times_slower_than_its_budget_fails(
    double: ControllerDouble, agent: AgentProcess, base: Release, models_dir: Path
) -> None:
    release = release_of(double, slow_model(models_dir / "slow.onnx"), version=2)
    policy = ProbationPolicy(window_s=1, min_requests=0, max_extension_s=0, latency_budget_ms=0.05)
    failed_with(
        double, sequence_of(deploy(double, release, probation=policy)), "latency_budget_exceeded"
    )
    assert_serving(agent, base)


def base_expected() -> object:
    import numpy as np

    return np.zeros((2, 4), dtype=np.float32)
