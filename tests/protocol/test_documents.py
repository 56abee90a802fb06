"""Document schemas: forward compatibility, and refusal of documents that lie about shape."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from protocol import (
    DOCUMENT_TYPES,
    MAX_CHECK_BUNDLE_BYTES,
    Command,
    Deployment,
    Envelope,
    Event,
    MalformedDocumentError,
    PayloadTypeError,
    Release,
    Role,
    State,
    TelemetryBatch,
    TrustRoot,
    UnsupportedSchemaError,
    verify_document,
)
from tests.factories import NOW, Keyring, make_deployment, make_release


def test_every_document_has_a_distinct_payload_type() -> None:
    payload_types = [cls.PAYLOAD_TYPE for cls in DOCUMENT_TYPES.values()]
    assert len(set(payload_types)) == len(payload_types) == 9
    assert all(DOCUMENT_TYPES[cls.PAYLOAD_TYPE] is cls for cls in DOCUMENT_TYPES.values())


def test_every_document_carries_a_schema_version() -> None:
    assert json.loads(make_release().to_payload())["schema_version"] == 2


def test_unknown_fields_survive_a_round_trip() -> None:
    # A newer controller adds a field; an older relay re-serializes without losing it.
    obj = make_release().to_json_obj()
    obj["future_field"] = {"nested": [1, 2]}
    obj["artifact"]["mirror"] = "https://cdn.example/a"
    release = Release.from_json_obj(obj)
    again = Release.from_payload(release.to_payload()).to_json_obj()
    assert again["future_field"] == {"nested": [1, 2]}
    assert again["artifact"]["mirror"] == "https://cdn.example/a"


def test_signed_document_with_unknown_fields_verifies(keyring: Keyring) -> None:
    obj = make_release().to_json_obj() | {"added_by_v2": True}
    envelope = Release.from_json_obj(obj).sign(keyring.keys[Role.RELEASE])
    verified = verify_document(envelope, Release, keyring.trust_root())
    assert verified.model_extra == {"added_by_v2": True}


@pytest.mark.parametrize(
    "filename", ["../model.onnx", "/etc/passwd", "a/b.onnx", "..", ".", "", "x\x00y", "a\\b"]
)
def test_artifact_file_name_that_escapes_its_directory_is_refused(filename: str) -> None:
    obj = make_release().to_json_obj()
    obj["artifact"]["filename"] = filename
    with pytest.raises(MalformedDocumentError, match="filename"):
        Release.from_json_obj(obj)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("length", 0),
        ("length", -1),
        ("sha256", "ABC"),
        ("sha256", "G" * 64),
        ("format", "pickle"),
    ],
)
def test_artifact_with_impossible_identity_is_refused(field: str, value: Any) -> None:
    obj = make_release().to_json_obj()
    obj["artifact"][field] = value
    with pytest.raises(MalformedDocumentError):
        Release.from_json_obj(obj)


@pytest.mark.parametrize("version", [1, 3])
def test_release_of_a_schema_version_this_code_does_not_read_is_refused(version: int) -> None:
    # Version 1 carried golden cases inline; a device must not run it without its check.
    obj = make_release().to_json_obj()
    obj["schema_version"] = version
    with pytest.raises(UnsupportedSchemaError, match=f"schema_version {version} is not supported"):
        Release.from_json_obj(obj)


def test_release_without_a_check_bundle_is_refused() -> None:
    obj = make_release().to_json_obj()
    del obj["check_bundle"]
    with pytest.raises(MalformedDocumentError, match="check_bundle"):
        Release.from_json_obj(obj)


def test_check_bundle_above_its_cap_is_refused() -> None:
    obj = make_release().to_json_obj()
    obj["check_bundle"]["length"] = MAX_CHECK_BUNDLE_BYTES + 1
    with pytest.raises(MalformedDocumentError, match=r"check_bundle\.length"):
        Release.from_json_obj(obj)


def test_deployment_that_expires_before_it_is_issued_is_refused(keyring: Keyring) -> None:
    release = keyring.sign(make_release(), Role.RELEASE)
    with pytest.raises(ValueError, match="expires must be after issued_at"):
        make_deployment(release, expires=NOW - timedelta(seconds=1))


def test_deployment_carries_the_release_envelope_unchanged(keyring: Keyring) -> None:
    release_envelope = keyring.sign(make_release(), Role.RELEASE)
    deployment_envelope = keyring.sign(make_deployment(release_envelope), Role.DEPLOYMENT)
    received = Envelope.from_bytes(deployment_envelope.to_bytes())
    deployment = verify_document(received, Deployment, keyring.trust_root())
    assert deployment.release_envelope() == release_envelope
    assert (
        verify_document(deployment.release_envelope(), Release, keyring.trust_root()).version == 3
    )


def test_deployment_with_a_malformed_release_envelope_is_refused(keyring: Keyring) -> None:
    obj = make_deployment(keyring.sign(make_release(), Role.RELEASE)).to_json_obj()
    obj["release"] = {"payload": "not an envelope"}
    with pytest.raises(MalformedDocumentError, match="release"):
        Deployment.from_json_obj(obj)


@pytest.mark.parametrize("device_id", ["", "+", "#", "a/b", "$SYS", "-x", "x" * 65, "ü"])
def test_deployment_for_an_invalid_device_id_is_refused(device_id: str, keyring: Keyring) -> None:
    obj = make_deployment(keyring.sign(make_release(), Role.RELEASE)).to_json_obj()
    obj["device_id"] = device_id
    with pytest.raises(MalformedDocumentError, match="device_id"):
        Deployment.from_json_obj(obj)


def test_naive_timestamps_are_refused() -> None:
    obj = make_release().to_json_obj() | {"created_at": "2026-11-30T12:00:00"}
    with pytest.raises(MalformedDocumentError, match="created_at"):
        Release.from_json_obj(obj)


def test_command_with_an_unknown_action_is_refused() -> None:
    obj = {
        "device_id": "d1",
        "sequence": 1,
        "issued_at": NOW.isoformat(),
        "expires": (NOW + timedelta(minutes=5)).isoformat(),
        "action": "format-disk",
    }
    with pytest.raises(MalformedDocumentError, match="action"):
        Command.from_json_obj(obj)


def test_trust_root_whose_key_id_is_not_its_keys_hash_is_refused(keyring: Keyring) -> None:
    obj = keyring.trust_root().to_json_obj()
    key_id, entry = next(iter(obj["keys"].items()))
    entry["public"] = "00" * 32
    with pytest.raises(MalformedDocumentError, match="not the SHA-256"):
        TrustRoot.from_json_obj(obj)
    assert key_id  # the id stayed, only the key changed


def test_trust_root_without_a_role_is_refused(keyring: Keyring) -> None:
    obj = keyring.trust_root().to_json_obj()
    del obj["roles"]["deployment"]
    with pytest.raises(MalformedDocumentError, match="roles missing: deployment"):
        TrustRoot.from_json_obj(obj)


def test_trust_root_with_an_unreachable_threshold_is_refused(keyring: Keyring) -> None:
    obj = keyring.trust_root().to_json_obj()
    obj["roles"]["release"]["threshold"] = 2
    with pytest.raises(MalformedDocumentError, match="threshold 2 exceeds"):
        TrustRoot.from_json_obj(obj)


def test_unsigned_inspection_still_checks_the_payload_type(keyring: Keyring) -> None:
    envelope = keyring.sign(make_release(), Role.RELEASE)
    with pytest.raises(PayloadTypeError):
        Deployment.from_unverified_envelope(envelope)


def test_payload_that_is_not_json_is_refused() -> None:
    with pytest.raises(MalformedDocumentError, match="not JSON"):
        State.from_payload(b"{")


def test_reports_round_trip() -> None:
    event = Event(device_id="d1", seq=4, type="fetch_started", at=NOW, details={"bytes": 10})
    assert Event.from_payload(event.to_payload()) == event
    batch = TelemetryBatch.from_json_obj(
        {
            "device_id": "d1",
            "seq": 9,
            "windows": [
                {
                    "model": "digits",
                    "window_start": NOW.isoformat(),
                    "window_s": 10,
                    "requests": 5,
                    "errors": 1,
                    "nonfinite_outputs": 0,
                    "latency": {"p50_ms": 1, "p95_ms": 2, "p99_ms": 3},
                }
            ],
        }
    )
    assert TelemetryBatch.from_payload(batch.to_payload()) == batch


def test_telemetry_with_more_errors_than_requests_is_refused() -> None:
    window = {
        "model": "m",
        "window_start": NOW.isoformat(),
        "window_s": 10,
        "requests": 1,
        "errors": 2,
        "nonfinite_outputs": 0,
    }
    with pytest.raises(MalformedDocumentError, match="errors exceed requests"):
        TelemetryBatch.from_json_obj({"device_id": "d1", "seq": 1, "windows": [window]})
