"""DSSE envelopes: the spec's encoding, and refusal of malformed envelopes."""

from __future__ import annotations

import json

import pytest

from protocol import (
    MAX_ENVELOPE_BYTES,
    MAX_SIGNATURES,
    Envelope,
    MalformedDocumentError,
    SigningKey,
    pae,
    sign_envelope,
)


def test_pae_matches_the_dsse_specification() -> None:
    # The example from the DSSE protocol document.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


def test_envelope_round_trips_through_bytes() -> None:
    key = SigningKey.generate()
    envelope = sign_envelope("application/x-test", b"\x00payload\xff", [key])
    assert Envelope.from_bytes(envelope.to_bytes()) == envelope
    assert envelope.signatures[0].key_id == key.public_key.key_id


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"payload": "", "signatures": []}', "no payloadType"),
        (b'{"payloadType": "t", "signatures": []}', "no payload"),
        (b'{"payloadType": "t", "payload": ""}', "no signatures"),
        (b'{"payloadType": "t", "payload": "!!!", "signatures": []}', "not base64"),
        (b'{"payloadType": "t", "payload": "", "signatures": [1]}', "not an object"),
        (b'{"payloadType": "t", "payload": "", "signatures": [{"keyid": 1}]}', "string keyid"),
    ],
)
def test_malformed_envelope_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedDocumentError, match=reason):
        Envelope.from_bytes(data)


def test_deeply_nested_envelope_is_refused_not_a_crash() -> None:
    with pytest.raises(MalformedDocumentError, match="nested too deeply"):
        Envelope.from_bytes(b"[" * 100_000)


def test_oversized_envelope_is_refused_before_parsing() -> None:
    with pytest.raises(MalformedDocumentError, match="exceeds"):
        Envelope.from_bytes(b" " * (MAX_ENVELOPE_BYTES + 1))


def test_too_many_signatures_are_refused() -> None:
    signature = {"keyid": "k", "sig": ""}
    data = json.dumps(
        {"payloadType": "t", "payload": "", "signatures": [signature] * (MAX_SIGNATURES + 1)}
    ).encode()
    with pytest.raises(MalformedDocumentError, match="signatures"):
        Envelope.from_bytes(data)
