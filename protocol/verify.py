"""Signature verification against a trust root: untrusted bytes in, verified documents out.

Every function here either returns a verified, parsed document or raises a
``ProtocolError`` leaf; none has side effects. Checks run in this order so that nothing
parses a payload before its signatures hold: envelope shape, payload type, signatures
(threshold of distinct role key ids), then the payload schema.

Policy that needs state (sequence high-water marks, time floors, "is this for me") lives
with the caller, who holds that state; ``verify_not_expired`` is the pure part of expiry.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TypeVar

from .deployment import Command, Deployment
from .document import Document
from .dsse import Envelope, pae
from .errors import (
    BadSignatureError,
    ExpiredError,
    KeyNotInRoleError,
    PayloadTypeError,
    RotationVersionError,
    ThresholdNotMetError,
)
from .keys import PublicKey
from .release import Release
from .trust_root import Role, TrustRoot

__all__ = [
    "SIGNING_ROLE",
    "verify_document",
    "verify_initial_trust_root",
    "verify_not_expired",
    "verify_signatures",
    "verify_trust_root_rotation",
]

D = TypeVar("D", bound=Document)

# Which role may sign which document. Anything else is never verified against a root.
SIGNING_ROLE: dict[type[Document], Role] = {
    TrustRoot: Role.ROOT,
    Release: Role.RELEASE,
    Deployment: Role.DEPLOYMENT,
    Command: Role.DEPLOYMENT,
}


def verify_signatures(
    envelope: Envelope, keys: Mapping[str, PublicKey], threshold: int, *, signer: str
) -> set[str]:
    """Check that at least ``threshold`` distinct keys of ``keys`` signed ``envelope``.

    Returns the key ids whose signatures verified. ``signer`` names the role in errors.
    """
    message = pae(envelope.payload_type, envelope.payload)
    verified: set[str] = set()
    failed: set[str] = set()
    outsiders: set[str] = set()
    for signature in envelope.signatures:
        key = keys.get(signature.key_id)
        if key is None:
            outsiders.add(signature.key_id)
        elif key.verify(signature.sig, message):
            verified.add(signature.key_id)
        else:
            failed.add(signature.key_id)
    if len(verified) >= threshold:
        return verified
    if failed:
        raise BadSignatureError(f"signature by {_short(failed)} does not verify for {signer}")
    if not verified and outsiders:
        raise KeyNotInRoleError(f"signed only by keys outside {signer}: {_short(outsiders)}")
    raise ThresholdNotMetError(f"{len(verified)} of the {threshold} required {signer} keys signed")


def verify_document(envelope: Envelope, document_type: type[D], trust_root: TrustRoot) -> D:
    """Verify ``envelope`` as a ``document_type`` signed by that type's role."""
    role = SIGNING_ROLE[document_type]
    _expect_payload_type(envelope, document_type)
    verify_signatures(
        envelope,
        trust_root.role_keys(role),
        trust_root.threshold(role),
        signer=f"role {role.value} of trust root v{trust_root.version}",
    )
    return document_type.from_payload(envelope.payload)


def verify_initial_trust_root(envelope: Envelope) -> TrustRoot:
    """Verify a trust root installed at provisioning: signed by its own root threshold.

    This proves integrity, not authority: whoever provisions the device decides which
    first trust root it holds. Later roots must come through ``verify_trust_root_rotation``.
    """
    _expect_payload_type(envelope, TrustRoot)
    claimed = TrustRoot.from_payload(envelope.payload)
    return verify_document(envelope, TrustRoot, claimed)


def verify_trust_root_rotation(trusted: TrustRoot, envelope: Envelope) -> TrustRoot:
    """Verify trust root N+1 against trusted root N (python-tuf's rules).

    N+1 must be signed by a threshold of N's root keys (authority) and by a threshold of
    its own root keys (the new keys are held by someone), and its version must be exactly
    N+1: no skipping, no going back. Expiry of intermediate roots is not checked, so a
    device that was offline long can still walk forward; check the last one's expiry.
    """
    _expect_payload_type(envelope, TrustRoot)
    verify_signatures(
        envelope,
        trusted.role_keys(Role.ROOT),
        trusted.threshold(Role.ROOT),
        signer=f"role root of the trusted trust root v{trusted.version}",
    )
    candidate = TrustRoot.from_payload(envelope.payload)
    if candidate.version != trusted.version + 1:
        raise RotationVersionError(
            f"trust root v{candidate.version} cannot follow v{trusted.version}; "
            f"expected v{trusted.version + 1}"
        )
    return verify_document(envelope, TrustRoot, candidate)


def verify_not_expired(expires: datetime, now: datetime, *, what: str) -> None:
    """Raise ``ExpiredError`` when ``now`` is at or past ``expires``."""
    if now >= expires:
        raise ExpiredError(f"{what} expired at {expires.isoformat()} (now {now.isoformat()})")


def _expect_payload_type(envelope: Envelope, document_type: type[Document]) -> None:
    if envelope.payload_type != document_type.PAYLOAD_TYPE:
        raise PayloadTypeError(
            f"expected {document_type.__name__} ({document_type.PAYLOAD_TYPE}), "
            f"got {envelope.payload_type!r}"
        )


def _short(key_ids: set[str]) -> str:
    return ", ".join(sorted(key_id[:12] for key_id in key_ids))
