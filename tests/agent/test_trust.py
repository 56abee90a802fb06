"""Attacks on the deployment and command path, each refused with no change on disk."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest

import protocol
from agent.errors import (
    BadSignatureError,
    DowngradeError,
    DuplicateCommandError,
    DuplicateDeploymentError,
    ExpiredCommandError,
    ExpiredDeploymentError,
    MalformedDocumentError,
    ModelMismatchError,
    RefusalError,
    ReplayedCommandError,
    ReplayedDeploymentError,
    TrustRootExpiredError,
    TrustRootRotationError,
    UnsafeFileNameError,
    UnsupportedSchemaError,
    WrongDeviceError,
    WrongPayloadTypeError,
)
from agent.update.trust import (
    adopt_trust_root,
    adopt_trust_roots,
    read_desired_state,
    verify_deployment,
)
from protocol import DesiredState, Envelope, Release, Role, SigningKey
from tests.agent.conftest import DEVICE_ID, Device, rotate
from tests.factories import NOW, make_deployment, make_release


def test_valid_deployment_is_accepted_and_raises_the_marks(device: Device) -> None:
    verified = device.deliver(device.deployment(sequence=7), now=NOW + timedelta(minutes=5))
    assert verified.release.version == 3
    assert verified.effective_time == NOW + timedelta(minutes=5)
    state = device.state()
    assert (state.deployment_sequence("digits"), state.time_floor) == (7, NOW)


def test_deployment_for_another_device_is_refused(device: Device) -> None:
    device.refuse(device.deployment(device_id="cam-paris-0002"), WrongDeviceError)


def test_replayed_older_deployment_is_refused(device: Device) -> None:
    device.deliver(device.deployment(sequence=7))
    info = device.refuse(device.deployment(sequence=6), ReplayedDeploymentError)
    assert not isinstance(info.value, DuplicateDeploymentError)


def test_redelivered_deployment_is_a_quiet_duplicate(device: Device) -> None:
    envelope = device.deployment(sequence=7)
    device.deliver(envelope)
    info = device.refuse(envelope, DuplicateDeploymentError)
    assert isinstance(info.value, ReplayedDeploymentError)
    assert info.value.reason == "duplicate_deployment"


def test_expired_redelivery_is_still_a_quiet_duplicate(device: Device) -> None:
    envelope = device.deployment(sequence=7)
    device.deliver(envelope)
    device.refuse(envelope, DuplicateDeploymentError, now=NOW + timedelta(days=2))


def test_sequence_high_water_mark_survives_restart(device: Device) -> None:
    old = device.deployment(sequence=6)
    device.deliver(device.deployment(sequence=7))
    restarted = Device(device.keyring, device.state_path)  # nothing kept in memory
    assert restarted.state().deployment_sequence("digits") == 7
    restarted.refuse(old, ReplayedDeploymentError)


def test_expired_deployment_is_refused(device: Device) -> None:
    envelope = device.deployment(expires=NOW + timedelta(hours=1))
    device.refuse(envelope, ExpiredDeploymentError, now=NOW + timedelta(hours=1))


def test_expired_deployment_with_clock_moved_back_is_refused(device: Device) -> None:
    later = NOW + timedelta(hours=2)
    device.deliver(
        device.deployment(sequence=7, issued_at=later, expires=later + timedelta(hours=1)),
        now=later,
    )
    # Captured at NOW, expired by the time floor even though the clock was set back.
    stale = device.deployment(sequence=8, expires=NOW + timedelta(hours=1))
    device.refuse(stale, ExpiredDeploymentError, now=NOW + timedelta(minutes=30))


def test_time_floor_never_decreases(device: Device) -> None:
    later = NOW + timedelta(hours=1)
    expires = later + timedelta(hours=1)
    device.deliver(device.deployment(sequence=7, issued_at=later, expires=expires), now=later)
    device.deliver(
        device.deployment(sequence=8, issued_at=NOW, expires=NOW + timedelta(hours=3)), now=later
    )
    assert device.state().time_floor == later


def test_release_downgrade_without_rollback_is_refused(device: Device) -> None:
    device.commit("digits", 3)
    device.refuse(device.deployment(release={"version": 2}), DowngradeError)


def test_release_downgrade_with_rollback_is_accepted(device: Device) -> None:
    device.commit("digits", 3)
    verified = device.deliver(device.deployment(release={"version": 2}, rollback=True))
    assert verified.release.version == 2


def test_downgrade_mark_is_per_model_and_allows_the_same_version(device: Device) -> None:
    device.commit("digits", 3)
    device.commit("faces", 9)
    assert device.deliver(device.deployment(sequence=7)).release.version == 3


def test_committed_rollback_does_not_lower_the_mark(device: Device) -> None:
    device.commit("digits", 3)
    device.commit("digits", 2)
    assert device.state().committed_version("digits") == 3


def test_release_signed_by_deployment_key_is_refused(device: Device) -> None:
    # The online deployment key alone must never make a device run a new model.
    keys = device.keyring.keys[Role.DEPLOYMENT]
    device.refuse(device.deployment(release_signers=keys), BadSignatureError)


def test_deployment_signed_by_release_key_is_refused(device: Device) -> None:
    keys = device.keyring.keys[Role.RELEASE]
    device.refuse(device.deployment(signers=keys), BadSignatureError)


def test_deployment_signed_by_unknown_key_is_refused(device: Device) -> None:
    device.refuse(device.deployment(signers=[SigningKey.generate()]), BadSignatureError)


def test_tampered_deployment_payload_is_refused(device: Device) -> None:
    envelope = Envelope.from_bytes(device.deployment(sequence=7))
    document = json.loads(envelope.payload)
    document["device_id"] = "cam-paris-0002"
    forged = dataclasses.replace(envelope, payload=json.dumps(document).encode())
    device.refuse(forged.to_bytes(), BadSignatureError)


def test_release_envelope_presented_as_deployment_is_refused(device: Device) -> None:
    release = make_release().sign(device.keyring.keys[Role.RELEASE])
    device.refuse(release.to_bytes(), WrongPayloadTypeError)


def test_version_1_release_with_inline_golden_cases_is_refused_as_unsupported(
    device: Device,
) -> None:
    # Signed by the real release key, but of the retired format: never run unchecked.
    old = make_release().to_json_obj() | {"schema_version": 1}
    del old["check_bundle"]
    old["golden"] = [{"inputs": [], "expected_outputs": []}]
    signed = protocol.sign_envelope(
        Release.PAYLOAD_TYPE, protocol.canonical_json(old), device.keyring.keys[Role.RELEASE]
    )
    deployment = make_deployment(signed).sign(device.keyring.keys[Role.DEPLOYMENT])
    info = device.refuse(deployment.to_bytes(), UnsupportedSchemaError)
    assert "schema_version 1 is not supported" in str(info.value)
    assert UnsupportedSchemaError.reason == "unsupported_schema"


def test_command_presented_as_deployment_is_refused(device: Device) -> None:
    device.refuse(device.command(sequence=8), WrongPayloadTypeError)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not json",
        b"[]",
        b'{"payloadType": "x"}',
        b" " * (protocol.MAX_ENVELOPE_BYTES + 1),
        b"[" * 100_000,
    ],
    ids=["empty", "not-json", "array", "no-payload", "oversized", "nested-too-deep"],
)
def test_garbage_bytes_are_refused(device: Device, garbage: bytes) -> None:
    device.refuse(garbage, MalformedDocumentError)


def test_deeply_nested_payload_is_refused_before_its_signature_is_checked(
    device: Device,
) -> None:
    payload = b'{"trust_root":' + b"[" * 100_000 + b"}"
    forged = protocol.sign_envelope(
        protocol.Deployment.PAYLOAD_TYPE, payload, [SigningKey.generate()]
    )
    device.refuse(forged.to_bytes(), MalformedDocumentError)


def test_artifact_file_name_with_a_path_is_refused(device: Device) -> None:
    # Signed by the release key and still refused: a path never reaches the store.
    release = make_release().model_dump(mode="json")
    release["artifact"]["filename"] = "../../etc/passwd"
    payload = protocol.canonical_json(release)
    envelope = protocol.sign_envelope(
        Release.PAYLOAD_TYPE, payload, device.keyring.keys[Role.RELEASE]
    )
    deployment = protocol.Deployment.from_json_obj(
        {
            "schema_version": 2,
            "device_id": DEVICE_ID,
            "model": "digits",
            "sequence": 7,
            "issued_at": NOW.isoformat(),
            "expires": (NOW + timedelta(hours=1)).isoformat(),
            "release": envelope.to_json_obj(),
        }
    )
    signed = deployment.sign(device.keyring.keys[Role.DEPLOYMENT]).to_bytes()
    device.refuse(signed, RefusalError)


def test_unsafe_file_name_is_refused_even_if_the_schema_let_it_through(
    device: Device, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defence in depth: a loosened protocol schema must not open a path traversal.
    real_verify = protocol.verify_document

    def lenient(envelope: Envelope, document_type: type[Any], root: protocol.TrustRoot) -> object:
        document: object = real_verify(envelope, document_type, root)
        if isinstance(document, Release):
            artifact = document.artifact.model_copy(update={"filename": "../evil.onnx"})
            return document.model_copy(update={"artifact": artifact})
        return document

    monkeypatch.setattr(protocol, "verify_document", lenient)
    device.refuse(device.deployment(), UnsafeFileNameError)


def test_newer_trust_root_adopted_only_through_rotation(device: Device) -> None:
    successor, root_v2 = rotate(device.keyring, Role.ROOT, Role.DEPLOYMENT)
    carried = root_v2.to_json_obj()
    # Signed by the new deployment key only: verifiable only once v2 is adopted.
    device.deliver(
        device.deployment(sequence=7, trust_root=carried, signers=successor.keys[Role.DEPLOYMENT])
    )
    assert device.state().trust_root_version == 2
    # The rotated-out deployment key is no longer trusted.
    device.refuse(device.deployment(sequence=8), BadSignatureError)


def test_a_device_two_rotations_behind_walks_the_carried_chain(device: Device) -> None:
    # Each rotation replaced the deployment key: only v3 trusts the key that signs.
    middle, root_v2 = rotate(device.keyring, Role.DEPLOYMENT)
    newest, root_v3 = rotate(middle, Role.DEPLOYMENT)
    chain = [root_v3.to_json_obj(), root_v2.to_json_obj()]  # any order: walked by version
    device.deliver(
        device.deployment(sequence=7, trust_roots=chain, signers=newest.keys[Role.DEPLOYMENT])
    )
    assert device.state().trust_root_version == 3


def test_a_chain_with_a_gap_is_refused_and_nothing_adopted(device: Device) -> None:
    middle, _root_v2 = rotate(device.keyring, Role.DEPLOYMENT)
    newest, root_v3 = rotate(middle, Role.DEPLOYMENT)
    envelope = device.deployment(
        trust_roots=[root_v3.to_json_obj()], signers=newest.keys[Role.DEPLOYMENT]
    )
    device.refuse(envelope, TrustRootRotationError)
    assert device.state().trust_root_version == 1


def test_trust_root_not_signed_by_the_trusted_root_is_refused(device: Device) -> None:
    successor, _ = rotate(device.keyring, Role.ROOT, Role.DEPLOYMENT)
    self_signed = successor.trust_root().sign(successor.keys[Role.ROOT])
    envelope = device.deployment(
        trust_root=self_signed.to_json_obj(), signers=successor.keys[Role.DEPLOYMENT]
    )
    device.refuse(envelope, TrustRootRotationError)


def test_trust_root_not_signed_by_its_own_root_keys_is_refused(device: Device) -> None:
    successor, _ = rotate(device.keyring, Role.ROOT)
    old_signed = successor.trust_root().sign(device.keyring.keys[Role.ROOT])
    device.refuse(device.deployment(trust_root=old_signed.to_json_obj()), TrustRootRotationError)


def test_trust_root_skipping_a_version_is_refused(device: Device) -> None:
    successor, _ = rotate(device.keyring, Role.ROOT)
    successor.version = 3
    skipping = successor.trust_root().sign(
        [*device.keyring.keys[Role.ROOT], *successor.keys[Role.ROOT]]
    )
    device.refuse(device.deployment(trust_root=skipping.to_json_obj()), TrustRootRotationError)


def test_carried_trust_root_already_trusted_is_ignored(device: Device) -> None:
    current = device.keyring.signed_trust_root().to_json_obj()
    device.deliver(device.deployment(trust_root=current))
    assert device.state().trust_root_version == 1


def test_trust_root_in_a_refused_deployment_is_not_adopted(device: Device) -> None:
    _, root_v2 = rotate(device.keyring, Role.ROOT)
    envelope = device.deployment(device_id="cam-paris-0002", trust_root=root_v2.to_json_obj())
    device.refuse(envelope, WrongDeviceError)
    assert device.state().trust_root_version == 1


def test_trust_root_walk_is_capped(device: Device) -> None:
    keyring, chain = device.keyring, []
    for _ in range(4):
        keyring, envelope = rotate(keyring, Role.ROOT)
        chain.append(envelope)
    state = device.state()
    with pytest.raises(TrustRootRotationError, match="more than 3"):
        adopt_trust_roots(state, chain, now=NOW, max_steps=3)
    assert adopt_trust_roots(state, chain, now=NOW).trust_root_version == 5


def test_trust_root_walk_is_all_or_nothing(device: Device) -> None:
    successor, root_v2 = rotate(device.keyring, Role.ROOT)
    _, root_v3 = rotate(successor, Role.ROOT)
    forged_v3 = dataclasses.replace(root_v3, payload=root_v3.payload + b" ")
    state = device.state()
    with pytest.raises(TrustRootRotationError):
        adopt_trust_roots(state, [root_v2, forged_v3], now=NOW)
    assert state.trust_root_version == 1


def test_adopted_trust_root_that_has_expired_is_refused(device: Device) -> None:
    successor, _ = rotate(device.keyring, Role.ROOT)
    expired = successor.trust_root().model_copy(update={"expires": NOW - timedelta(seconds=1)})
    envelope = expired.sign([*device.keyring.keys[Role.ROOT], *successor.keys[Role.ROOT]])
    with pytest.raises(TrustRootExpiredError):
        adopt_trust_root(device.state(), envelope.to_bytes(), now=NOW)


def test_deployment_checked_against_an_expired_trust_root_is_refused(device: Device) -> None:
    # The provisioned root expires after a year; its keys are stale from then on.
    late = NOW + timedelta(days=400)
    envelope = device.deployment(issued_at=late, expires=late + timedelta(hours=1))
    device.refuse(envelope, TrustRootExpiredError, now=late)


def test_command_replay_is_refused(device: Device) -> None:
    device.deliver_command(device.command(sequence=3))
    device.refuse(device.command(sequence=2), ReplayedCommandError, command=True)
    device.refuse(device.command(sequence=3), DuplicateCommandError, command=True)


def test_command_sequence_is_counted_apart_from_deployments(device: Device) -> None:
    device.deliver(device.deployment(sequence=7))
    device.deliver_command(device.command(sequence=1))
    state = device.state()
    assert (state.deployment_sequence("digits"), state.command_sequence) == (7, 1)


def test_expired_command_is_refused(device: Device) -> None:
    envelope = device.command(expires=NOW + timedelta(minutes=1))
    device.refuse(envelope, ExpiredCommandError, now=NOW + timedelta(minutes=1), command=True)


def test_command_for_another_device_is_refused(device: Device) -> None:
    device.refuse(device.command(device_id="cam-paris-0002"), WrongDeviceError, command=True)


def test_deployment_presented_as_command_is_refused(device: Device) -> None:
    device.refuse(device.deployment(), WrongPayloadTypeError, command=True)


def test_verification_never_changes_the_state_passed_in(device: Device) -> None:
    state = device.state()
    _, root_v2 = rotate(device.keyring, Role.ROOT)
    verified = verify_deployment(
        device.deployment(trust_root=root_v2.to_json_obj()), state, device_id=DEVICE_ID, now=NOW
    )
    assert verified.trust_root.version == 2
    assert (state.trust_root_version, state.deployment_sequence("digits")) == (1, 0)


def test_accepting_the_same_verification_twice_is_refused(device: Device) -> None:
    state = device.state()
    verified = verify_deployment(device.deployment(), state, device_id=DEVICE_ID, now=NOW)
    accepted = state.accept_deployment(verified)
    with pytest.raises(DuplicateDeploymentError):
        accepted.accept_deployment(verified)


# Several models per device (ADR 0003) ------------------------------------------------


def test_each_model_has_its_own_sequence_mark(device: Device) -> None:
    device.deliver(device.deployment(sequence=7))  # digits
    # A lower sequence of another model is not a replay: its own mark is lower still.
    device.deliver(device.deployment(sequence=5, model="vision", release={"model": "vision"}))
    device.refuse(device.deployment(sequence=6), ReplayedDeploymentError)
    device.refuse(
        device.deployment(sequence=5, model="vision", release={"model": "vision"}),
        DuplicateDeploymentError,
    )
    state = device.state()
    assert (state.deployment_sequence("digits"), state.deployment_sequence("vision")) == (7, 5)


def test_deployment_of_one_model_carrying_a_release_of_another_is_refused(
    device: Device,
) -> None:
    info = device.refuse(
        device.deployment(model="vision", release={"model": "digits"}), ModelMismatchError
    )
    assert info.value.reason == "model_mismatch"


def removal_of(model: str, signers: list[SigningKey]) -> bytes:
    """A signed order to remove ``model`` from the device (sequence 8)."""
    removal = protocol.Deployment(
        device_id=DEVICE_ID,
        model=model,
        sequence=8,
        issued_at=NOW,
        expires=NOW + timedelta(hours=1),
        remove=True,
    )
    return removal.sign(signers).to_bytes()


def test_signed_removal_verifies_without_a_release(device: Device) -> None:
    verified = device.deliver(removal_of("digits", device.keyring.keys[Role.DEPLOYMENT]))
    assert verified.release is None
    assert device.state().deployment_sequence("digits") == 8


def test_removal_signed_by_the_release_key_is_refused(device: Device) -> None:
    forged = removal_of("digits", device.keyring.keys[Role.RELEASE])
    device.refuse(forged, BadSignatureError)


def test_desired_state_lists_deployment_envelopes_for_this_device(device: Device) -> None:
    entries = [
        json.loads(device.deployment(sequence=3)),
        json.loads(device.deployment(sequence=4, model="vision", release={"model": "vision"})),
    ]
    payload = DesiredState(device_id=DEVICE_ID, deployments=entries).to_payload()
    envelopes = read_desired_state(payload, device_id=DEVICE_ID)
    assert [device.deliver(e).deployment.model for e in envelopes] == ["digits", "vision"]


def test_desired_state_for_another_device_is_refused(device: Device) -> None:
    payload = DesiredState(device_id="cam-paris-0002", deployments=[]).to_payload()
    with pytest.raises(WrongDeviceError):
        read_desired_state(payload, device_id=DEVICE_ID)


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b'{"device_id": "cam-berlin-0001", "deployments": "x"}', b"[]"],
    ids=["empty", "torn", "deployments_not_a_list", "array"],
)
def test_malformed_desired_state_is_refused(payload: bytes) -> None:
    with pytest.raises(RefusalError):
        read_desired_state(payload, device_id=DEVICE_ID)


def test_desired_state_with_more_than_16_models_is_refused(device: Device) -> None:
    entry = json.loads(device.deployment())
    payload = json.dumps({"device_id": DEVICE_ID, "deployments": [entry] * 17}).encode()
    with pytest.raises(MalformedDocumentError):
        read_desired_state(payload, device_id=DEVICE_ID)


def shadow_order(
    device: Device, *, release_signers: list[SigningKey] | None = None, **release: Any
) -> bytes:
    """A deployment ordering a shadow of a candidate signed by the release key (or not)."""
    candidate = make_release(**release).sign(release_signers or device.keyring.keys[Role.RELEASE])
    order = protocol.ShadowOrder(release=candidate.to_json_obj(), until=NOW + timedelta(hours=1))
    deployment = make_deployment(candidate, release=None, shadow=order)
    return deployment.sign(device.keyring.keys[Role.DEPLOYMENT]).to_bytes()


def test_a_shadow_order_is_verified_like_a_release_and_serves_nothing(device: Device) -> None:
    verified = device.deliver(shadow_order(device, version=9))
    assert verified.release is None
    assert verified.shadow_release is not None
    assert verified.shadow_release.version == 9
    assert device.state().deployment_sequence("digits") == 7


def test_a_shadow_candidate_signed_by_the_deployment_key_is_refused(device: Device) -> None:
    order = shadow_order(device, release_signers=device.keyring.keys[Role.DEPLOYMENT])
    device.refuse(order, BadSignatureError)


def test_a_shadow_candidate_of_another_model_is_refused(device: Device) -> None:
    device.refuse(shadow_order(device, model="faces"), ModelMismatchError)


def test_a_shadow_below_the_committed_version_is_no_downgrade(device: Device) -> None:
    device.commit("digits", 5)
    verified = device.deliver(shadow_order(device, version=2))
    assert verified.shadow_release is not None


def test_a_kept_shadow_order_is_verified_again_only_while_it_is_the_newest(
    device: Device,
) -> None:
    kept = shadow_order(device)
    device.deliver(kept)
    again = verify_deployment(
        kept, device.state(), device_id=DEVICE_ID, now=NOW + timedelta(days=2), accepted=True
    )
    assert again.shadow_release is not None  # expiry is not checked again
    device.deliver(device.deployment(sequence=8))
    with pytest.raises(ReplayedDeploymentError):
        verify_deployment(kept, device.state(), device_id=DEVICE_ID, now=NOW, accepted=True)
