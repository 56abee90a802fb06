"""The base of every edgefleet document and the shared field types.

Invariants:
- every document has a ``schema_version`` and a distinct DSSE ``PAYLOAD_TYPE``;
- fields this version does not know are kept (``extra="allow"``) and written back out,
  so a relay or an older reader never strips what a newer writer added;
- a document of a ``schema_version`` this code does not read (newer, or retired like
  version 1 releases with inline golden cases) is refused with ``UnsupportedSchemaError``
  rather than half-understood;
- documents are immutable once parsed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .canonical import canonical_json, parse_json
from .dsse import MAX_ENVELOPE_BYTES, Envelope, sign_envelope
from .errors import MalformedDocumentError, PayloadTypeError, UnsupportedSchemaError
from .keys import SigningKey
from .topics import DEVICE_ID_PATTERN

# The field types below are shared by the document modules, not part of the public API.
__all__ = ["Document"]

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
# Model names, file names and the like: never a path, never "." or "..".
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class Model(BaseModel):
    """A nested part of a document: immutable and keeps unknown fields."""

    model_config = ConfigDict(extra="allow", frozen=True)


class Document(Model):
    """A top-level document with its own payload type."""

    PAYLOAD_TYPE: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1
    MIN_SCHEMA_VERSION: ClassVar[int] = 1

    schema_version: int = 1

    @field_validator("schema_version")
    @classmethod
    def _supported_schema(cls, value: int) -> int:
        if not cls.MIN_SCHEMA_VERSION <= value <= cls.SCHEMA_VERSION:
            raise ValueError(cls._unsupported(value))
        return value

    @classmethod
    def _unsupported(cls, value: object) -> str:
        return (
            f"{cls.__name__} schema_version {value} is not supported "
            f"(this code reads {cls.MIN_SCHEMA_VERSION}..{cls.SCHEMA_VERSION})"
        )

    def to_json_obj(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_payload(self) -> bytes:
        """The document as canonical JSON bytes."""
        return canonical_json(self.to_json_obj())

    @classmethod
    def from_payload(cls, payload: bytes) -> Self:
        """Parse and validate a payload; raises ``MalformedDocumentError``."""
        if len(payload) > MAX_ENVELOPE_BYTES:
            raise MalformedDocumentError(
                f"{cls.__name__} of {len(payload)} bytes exceeds {MAX_ENVELOPE_BYTES} bytes"
            )
        try:
            obj = parse_json(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MalformedDocumentError(f"{cls.__name__} payload is not JSON: {exc}") from exc
        return cls.from_json_obj(obj)

    @classmethod
    def from_json_obj(cls, obj: Any) -> Self:
        version = obj.get("schema_version", 1) if isinstance(obj, dict) else None
        if type(version) is int and not cls.MIN_SCHEMA_VERSION <= version <= cls.SCHEMA_VERSION:
            raise UnsupportedSchemaError(cls._unsupported(version))
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise MalformedDocumentError(f"invalid {cls.__name__}: {_summarize(exc)}") from exc

    @classmethod
    def from_unverified_envelope(cls, envelope: Envelope) -> Self:
        """Parse an envelope's payload WITHOUT checking signatures (inspection only)."""
        if envelope.payload_type != cls.PAYLOAD_TYPE:
            raise PayloadTypeError(
                f"expected a {cls.__name__} ({cls.PAYLOAD_TYPE}), got {envelope.payload_type}"
            )
        return cls.from_payload(envelope.payload)

    def sign(self, signers: Iterable[SigningKey]) -> Envelope:
        return sign_envelope(self.PAYLOAD_TYPE, self.to_payload(), signers)


def _summarize(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    shown = "; ".join(
        f"{'.'.join(str(part) for part in e['loc']) or '(document)'}: {e['msg']}"
        for e in errors[:5]
    )
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return shown + more


def _check_envelope_object(value: dict[str, Any]) -> dict[str, Any]:
    try:
        Envelope.from_json_obj(value)
    except MalformedDocumentError as exc:
        raise ValueError(str(exc)) from exc
    return value


# A DSSE envelope carried inside another document (a release inside a deployment, a
# trust root inside a command). Kept as the JSON object so its bytes are not re-encoded.
EnvelopeObject = Annotated[dict[str, Any], AfterValidator(_check_envelope_object)]
