"""The errors the protocol package raises.

Every failure to parse or verify a document is a ``ProtocolError``; callers that only
need "refuse and report" catch the root, callers that react differently catch a leaf::

    ProtocolError
    ├── MalformedDocumentError   bytes that are not a well-formed envelope or document
    │   └── UnsupportedSchemaError   a schema_version this code does not read
    ├── PayloadTypeError         an envelope of another document type (type confusion)
    ├── SignatureError           the signatures do not meet the role's threshold
    │   ├── BadSignatureError        a role key's signature does not verify
    │   ├── KeyNotInRoleError        only keys outside the role signed
    │   └── ThresholdNotMetError     too few distinct role keys signed
    ├── RotationError            a trust root that may not follow the trusted one
    │   └── RotationVersionError     its version is not exactly the next one
    ├── ExpiredError             a document past its expiry time
    ├── KeyFormatError           a key that is not a readable Ed25519 key
    └── TopicError               a topic or device id outside the topic grammar
"""

from __future__ import annotations

__all__ = [
    "BadSignatureError",
    "ExpiredError",
    "KeyFormatError",
    "KeyNotInRoleError",
    "MalformedDocumentError",
    "PayloadTypeError",
    "ProtocolError",
    "RotationError",
    "RotationVersionError",
    "SignatureError",
    "ThresholdNotMetError",
    "TopicError",
    "UnsupportedSchemaError",
]


class ProtocolError(Exception):
    """Root of every error raised by the protocol package."""


class MalformedDocumentError(ProtocolError):
    """The bytes are not a well-formed envelope or document of the expected schema."""


class UnsupportedSchemaError(MalformedDocumentError):
    """A document of a ``schema_version`` outside what this code reads (newer or retired)."""


class PayloadTypeError(ProtocolError):
    """The envelope carries another document type than the one expected."""


class SignatureError(ProtocolError):
    """The envelope's signatures do not satisfy the signing role."""


class BadSignatureError(SignatureError):
    """A signature that claims a role key does not verify with that key."""


class KeyNotInRoleError(SignatureError):
    """The envelope is signed only by keys that the role does not list."""


class ThresholdNotMetError(SignatureError):
    """Fewer distinct role keys signed than the role's threshold requires."""


class RotationError(ProtocolError):
    """A new trust root that may not replace the trusted one."""


class RotationVersionError(RotationError):
    """A new trust root whose version is not the trusted version plus one."""


class ExpiredError(ProtocolError):
    """A document whose expiry time has passed."""


class KeyFormatError(ProtocolError):
    """Key material that is not a readable Ed25519 key (or the passphrase is wrong)."""


class TopicError(ProtocolError):
    """A topic, prefix or device id outside the topic grammar."""
