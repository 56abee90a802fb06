"""Attacks on signed documents: each test names what it defends against."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from protocol import (
    BadSignatureError,
    Command,
    Deployment,
    Envelope,
    KeyNotInRoleError,
    MalformedDocumentError,
    PayloadTypeError,
    Release,
    Role,
    Signature,
    SigningKey,
    ThresholdNotMetError,
    pae,
    verify_document,
)
from tests.factories import Keyring, make_deployment, make_release


def test_release_signed_by_release_role_verifies(keyring: Keyring) -> None:
    release = make_release()
    envelope = keyring.sign(release, Role.RELEASE)
    verified = verify_document(envelope, Release, keyring.trust_root())
    assert verified == release


def test_verification_survives_the_wire(keyring: Keyring) -> None:
    envelope = keyring.sign(make_release(), Role.RELEASE)
    received = Envelope.from_bytes(envelope.to_bytes())
    assert verify_document(received, Release, keyring.trust_root()).version == 3


def test_release_signed_by_deployment_key_is_refused(keyring: Keyring) -> None:
    # The online deployment key alone must never be able to create a release.
    envelope = keyring.sign(make_release(), Role.DEPLOYMENT)
    with pytest.raises(KeyNotInRoleError):
        verify_document(envelope, Release, keyring.trust_root())


def test_key_outside_the_trust_root_is_refused(keyring: Keyring) -> None:
    envelope = make_release().sign([SigningKey.generate()])
    with pytest.raises(KeyNotInRoleError):
        verify_document(envelope, Release, keyring.trust_root())


def test_release_envelope_presented_as_deployment_is_refused(keyring: Keyring) -> None:
    # Payload type confusion: a valid signature over another document type.
    release_envelope = keyring.sign(make_release(), Role.RELEASE)
    keyring.keys[Role.DEPLOYMENT] = keyring.keys[Role.RELEASE]
    with pytest.raises(PayloadTypeError):
        verify_document(release_envelope, Deployment, keyring.trust_root())


def test_relabelled_payload_type_breaks_the_signature(keyring: Keyring) -> None:
    # PAE signs the type with the payload: changing the label invalidates the signature.
    deployment = make_deployment(keyring.sign(make_release(), Role.RELEASE))
    envelope = keyring.sign(deployment, Role.DEPLOYMENT)
    relabelled = dataclasses.replace(envelope, payload_type=Command.PAYLOAD_TYPE)
    with pytest.raises(BadSignatureError):
        verify_document(relabelled, Command, keyring.trust_root())


def test_tampered_payload_is_refused(keyring: Keyring) -> None:
    envelope = keyring.sign(make_release(), Role.RELEASE)
    document = json.loads(envelope.payload)
    document["version"] = 99
    forged = dataclasses.replace(envelope, payload=json.dumps(document).encode())
    with pytest.raises(BadSignatureError):
        verify_document(forged, Release, keyring.trust_root())


def test_signature_copied_from_another_document_is_refused(keyring: Keyring) -> None:
    good = keyring.sign(make_release(version=3), Role.RELEASE)
    other = keyring.sign(make_release(version=4), Role.RELEASE)
    spliced = dataclasses.replace(other, signatures=good.signatures)
    with pytest.raises(BadSignatureError):
        verify_document(spliced, Release, keyring.trust_root())


def test_envelope_without_signatures_is_refused(keyring: Keyring) -> None:
    envelope = dataclasses.replace(keyring.sign(make_release(), Role.RELEASE), signatures=())
    with pytest.raises(ThresholdNotMetError):
        verify_document(envelope, Release, keyring.trust_root())


def test_duplicated_signature_counts_once_toward_threshold() -> None:
    keyring = Keyring(
        keys={role: [SigningKey.generate(), SigningKey.generate()] for role in Role},
        thresholds=dict.fromkeys(Role, 2),
    )
    envelope = make_release().sign(keyring.keys[Role.RELEASE][:1])
    doubled = dataclasses.replace(envelope, signatures=envelope.signatures * 2)
    with pytest.raises(ThresholdNotMetError, match="1 of the 2"):
        verify_document(doubled, Release, keyring.trust_root())


def test_threshold_of_distinct_keys_verifies() -> None:
    keyring = Keyring(
        keys={role: [SigningKey.generate() for _ in range(3)] for role in Role},
        thresholds=dict.fromkeys(Role, 2),
    )
    envelope = make_release().sign(keyring.keys[Role.RELEASE][1:])
    assert verify_document(envelope, Release, keyring.trust_root()).model == "digits"


def test_signature_under_a_role_key_id_but_by_another_key_is_refused(keyring: Keyring) -> None:
    # An attacker names the real key id but signs with their own key.
    release = make_release()
    payload = release.to_payload()
    attacker = SigningKey.generate()
    forged_sig = attacker.sign(pae(Release.PAYLOAD_TYPE, payload))
    real_key_id = keyring.keys[Role.RELEASE][0].key_id
    envelope = Envelope(Release.PAYLOAD_TYPE, payload, (Signature(real_key_id, forged_sig),))
    with pytest.raises(BadSignatureError):
        verify_document(envelope, Release, keyring.trust_root())


def test_signed_but_malformed_payload_is_refused_after_signature_check(keyring: Keyring) -> None:
    payload = b'{"model": "digits", "schema_version": 2}'
    key = keyring.keys[Role.RELEASE][0]
    signature = Signature(key.key_id, key.sign(pae(Release.PAYLOAD_TYPE, payload)))
    envelope = Envelope(Release.PAYLOAD_TYPE, payload, (signature,))
    with pytest.raises(MalformedDocumentError, match="invalid Release"):
        verify_document(envelope, Release, keyring.trust_root())


def test_unsigned_garbage_is_refused_before_parsing(keyring: Keyring) -> None:
    # A payload that would crash a parser never reaches it without a valid signature.
    envelope = Envelope(Release.PAYLOAD_TYPE, b"\xff" * 64, (Signature("00" * 32, b"x" * 64),))
    with pytest.raises(KeyNotInRoleError):
        verify_document(envelope, Release, keyring.trust_root())


def test_standard_dsse_base64_variants_are_accepted(keyring: Keyring) -> None:
    envelope = keyring.sign(make_release(), Role.RELEASE)
    obj = envelope.to_json_obj()
    obj["payload"] = base64.urlsafe_b64encode(envelope.payload).decode().rstrip("=")
    assert Envelope.from_json_obj(obj) == envelope
