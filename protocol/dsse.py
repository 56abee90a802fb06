"""DSSE envelopes (https://github.com/secure-systems-lab/dsse, protocol v1).

An envelope is ``{"payloadType", "payload" (base64), "signatures": [{"keyid", "sig"}]}``.
Each signature is Ed25519 over the pre-authentication encoding (PAE)::

    "DSSEv1" SP LEN(payloadType) SP payloadType SP LEN(payload) SP payload

with LEN the ASCII decimal byte length, so the type is signed together with the payload
and an envelope of one type can never be passed off as another.

Invariants: parsing never trusts anything; an envelope is only bytes and claims until
``protocol.verify`` checks it against a trust root. Parsing refuses more than
``MAX_ENVELOPE_BYTES`` before decoding anything.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .canonical import canonical_json, parse_json
from .errors import MalformedDocumentError
from .keys import SigningKey

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
    "Envelope",
    "Signature",
    "pae",
    "sign_envelope",
]

MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
MAX_SIGNATURES = 16


def pae(payload_type: str, payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding of a payload and its type."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True)
class Signature:
    key_id: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    """A DSSE envelope as received: payload and signature claims, not yet verified."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signatures": [
                {"keyid": s.key_id, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json_obj())

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        if len(data) > MAX_ENVELOPE_BYTES:
            raise MalformedDocumentError(
                f"envelope of {len(data)} bytes exceeds {MAX_ENVELOPE_BYTES} bytes"
            )
        try:
            obj = parse_json(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MalformedDocumentError(f"envelope is not JSON: {exc}") from exc
        return cls.from_json_obj(obj)

    @classmethod
    def from_json_obj(cls, obj: Any) -> Envelope:
        if not isinstance(obj, dict):
            raise MalformedDocumentError("envelope is not a JSON object")
        payload_type = obj.get("payloadType")
        payload = obj.get("payload")
        signatures = obj.get("signatures")
        if not isinstance(payload_type, str) or not payload_type:
            raise MalformedDocumentError("envelope has no payloadType")
        if not isinstance(payload, str):
            raise MalformedDocumentError("envelope has no payload")
        if not isinstance(signatures, list):
            raise MalformedDocumentError("envelope has no signatures list")
        if len(signatures) > MAX_SIGNATURES:
            raise MalformedDocumentError(
                f"envelope has {len(signatures)} signatures, more than {MAX_SIGNATURES}"
            )
        parsed = []
        for entry in signatures:
            if not isinstance(entry, dict):
                raise MalformedDocumentError("signature entry is not an object")
            key_id, sig = entry.get("keyid"), entry.get("sig")
            if not isinstance(key_id, str) or not isinstance(sig, str):
                raise MalformedDocumentError("signature entry needs string keyid and sig")
            parsed.append(Signature(key_id, _b64decode(sig, "sig")))
        return cls(payload_type, _b64decode(payload, "payload"), tuple(parsed))


def sign_envelope(payload_type: str, payload: bytes, signers: Iterable[SigningKey]) -> Envelope:
    """Sign ``payload`` as ``payload_type`` with every key in ``signers``."""
    message = pae(payload_type, payload)
    signatures = tuple(Signature(key.key_id, key.sign(message)) for key in signers)
    if not signatures:
        raise ValueError("an envelope needs at least one signer")
    return Envelope(payload_type, payload, signatures)


def _b64decode(text: str, what: str) -> bytes:
    # DSSE allows standard or URL-safe base64, with or without padding.
    normalized = text.replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedDocumentError(f"{what} is not base64: {exc}") from exc
