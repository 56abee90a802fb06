"""Explain a signed document: what it is, who signed it, and whether it verifies.

Used by ``edgefleet doc verify``. Pure: bytes and a time in, a report out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from protocol import (
    DOCUMENT_TYPES,
    SIGNING_ROLE,
    Command,
    Deployment,
    Document,
    Envelope,
    ProtocolError,
    Release,
    TrustRoot,
    verify_document,
    verify_initial_trust_root,
    verify_not_expired,
    verify_trust_root_rotation,
)

__all__ = ["DocumentReport", "inspect_document"]


@dataclass
class DocumentReport:
    kind: str
    payload_type: str
    signers: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def verified(self) -> bool:
        return self.error is None

    def lines(self) -> list[str]:
        status = "verified" if self.verified else f"NOT verified: {self.error}"
        return [
            f"document:     {self.kind}",
            f"payload type: {self.payload_type}",
            *(f"signed by:    {signer}" for signer in self.signers),
            *(f"  {fact}" for fact in self.facts),
            f"result:       {status}",
        ]


def inspect_document(
    trust_root_bytes: bytes, document_bytes: bytes, now: datetime
) -> DocumentReport:
    """Verify ``document_bytes`` against the trust root and describe it."""
    trusted = verify_initial_trust_root(Envelope.from_bytes(trust_root_bytes))
    envelope = Envelope.from_bytes(document_bytes)
    document_type = DOCUMENT_TYPES.get(envelope.payload_type)
    report = DocumentReport(
        kind=document_type.__name__ if document_type else "unknown",
        payload_type=envelope.payload_type,
        signers=[_describe_signer(trusted, sig.key_id) for sig in envelope.signatures],
    )
    if document_type is None or document_type not in SIGNING_ROLE:
        report.error = "not a signed edgefleet document type"
        return report
    try:
        document = _verify(trusted, envelope, document_type)
        report.facts = _facts(document)
        _check_expiry(document, trusted, now)
    except ProtocolError as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    return report


def _verify(trusted: TrustRoot, envelope: Envelope, document_type: type[Document]) -> Document:
    if document_type is TrustRoot:
        claimed = TrustRoot.from_unverified_envelope(envelope)
        if claimed.version == trusted.version + 1:
            return verify_trust_root_rotation(trusted, envelope)
        return verify_document(envelope, TrustRoot, trusted)
    document = verify_document(envelope, document_type, trusted)
    if isinstance(document, Deployment):
        verify_document(document.release_envelope(), Release, trusted)
    return document


def _check_expiry(document: Document, trusted: TrustRoot, now: datetime) -> None:
    if isinstance(document, (Deployment, Command, TrustRoot)):
        verify_not_expired(document.expires, now, what=type(document).__name__)
    verify_not_expired(trusted.expires, now, what=f"trust root v{trusted.version}")


def _describe_signer(trusted: TrustRoot, key_id: str) -> str:
    roles = trusted.role_of_key(key_id)
    where = ", ".join(role.value for role in roles) if roles else "not in this trust root"
    return f"{key_id[:16]}… ({where})"


def _facts(document: Document) -> list[str]:
    if isinstance(document, TrustRoot):
        return [f"version {document.version}, expires {document.expires.isoformat()}"] + [
            f"role {role.value}: {entry.threshold} of {len(entry.keyids)} keys"
            for role, entry in document.roles.items()
        ]
    if isinstance(document, Release):
        artifact = document.artifact
        return [
            f"model {document.model} version {document.version}",
            f"artifact {artifact.filename} ({artifact.format}), {artifact.length} bytes, "
            f"sha256 {artifact.sha256}",
            f"check bundle {document.check_bundle.length} bytes, "
            f"sha256 {document.check_bundle.sha256}",
        ]
    if isinstance(document, Deployment):
        release = Release.from_unverified_envelope(document.release_envelope())
        return [
            f"device {document.device_id}, sequence {document.sequence}"
            + (", rollback" if document.rollback else ""),
            f"expires {document.expires.isoformat()}",
            f"release {release.model} version {release.version} (verified)",
        ]
    if isinstance(document, Command):
        return [
            f"device {document.device_id}, sequence {document.sequence}, action {document.action}",
            f"expires {document.expires.isoformat()}",
        ]
    return []
