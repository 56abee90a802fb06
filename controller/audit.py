"""The append-only, hash-chained audit log of every mutating call.

Each entry's hash is SHA-256 over the previous entry's hash and the entry's canonical
JSON, and a one-row head records the last entry. Appending locks the head row, so
concurrent writers (threads or controller processes) serialize and the chain never forks.
``verify_audit_chain`` finds an edited row (hash mismatch), a deleted row (gap in
sequence numbers or a broken link), and a deleted tail (head ahead of the last row).
Rewriting the whole chain and the head together is not detectable from inside the
database: whoever can write it can recompute every hash. ``edgefleet audit head`` prints
the head (``SEQ:SHA256``) to export elsewhere (a log server, a ticket, a chat); an
anchor checked by ``verify_audit_chain(anchors=...)`` then fails when the chain up to
it was rewritten. A verification without anchors says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from protocol import canonical_json

from .tables import AuditEntry, AuditHead, utcnow
from .tokens import Principal

__all__ = [
    "AuditAnchor",
    "AuditProblem",
    "append_audit",
    "audit_head",
    "hash_of_entry",
    "list_audit",
    "verify_audit_chain",
]

GENESIS_SHA256 = "0" * 64


def _entry_hash(
    prev_sha256: str,
    *,
    seq: int,
    at: datetime,
    actor: str,
    role: str,
    action: str,
    target: str,
    details: dict[str, Any],
) -> str:
    body = canonical_json(
        {
            "seq": seq,
            "at": _as_utc(at).isoformat(),
            "actor": actor,
            "role": role,
            "action": action,
            "target": target,
            "details": details,
        }
    )
    return hashlib.sha256(prev_sha256.encode("ascii") + body).hexdigest()


def append_audit(
    session: Session,
    principal: Principal,
    *,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction."""
    head = session.exec(select(AuditHead).where(AuditHead.id == 1).with_for_update()).first()
    if head is None:
        head = AuditHead(id=1, seq=0, sha256=GENESIS_SHA256)
        session.add(head)
    fields: dict[str, Any] = {
        "seq": head.seq + 1,
        "at": utcnow(),
        "actor": f"{principal.name} ({principal.token_id})",
        "role": principal.role.value,
        "action": action,
        "target": target,
        "details": details or {},
    }
    entry = AuditEntry(**fields, prev_sha256=head.sha256, sha256=_entry_hash(head.sha256, **fields))
    session.add(entry)
    head.seq, head.sha256 = entry.seq, entry.sha256
    session.add(head)
    session.flush()
    return entry


def list_audit(session: Session, *, limit: int, before_seq: int | None = None) -> list[AuditEntry]:
    """Up to ``limit`` entries, newest first; ``before_seq`` pages back past an entry."""
    query = select(AuditEntry).order_by(col(AuditEntry.seq).desc()).limit(limit)
    if before_seq is not None:
        query = query.where(AuditEntry.seq < before_seq)
    return list(session.exec(query).all())


@dataclass(frozen=True)
class AuditProblem:
    seq: int
    problem: str


@dataclass(frozen=True)
class AuditAnchor:
    """An entry's hash exported from the controller host, as ``audit head`` printed it."""

    seq: int
    sha256: str

    @classmethod
    def parse(cls, text: str) -> AuditAnchor:
        seq, _, sha256 = text.partition(":")
        if not seq.isdigit() or len(sha256) != 64:
            raise ValueError(f"{text!r} is not SEQ:SHA256 as 'audit head' prints it")
        return cls(int(seq), sha256.lower())

    def __str__(self) -> str:
        return f"{self.seq}:{self.sha256}"


def audit_head(session: Session) -> AuditAnchor:
    """The last entry, to export as an anchor (``0:000…`` for an empty log)."""
    head = session.get(AuditHead, 1)
    if head is None:
        return AuditAnchor(0, GENESIS_SHA256)
    return AuditAnchor(head.seq, head.sha256)


def verify_audit_chain(
    session: Session, anchors: Iterable[AuditAnchor] = ()
) -> tuple[int, list[AuditProblem]]:
    """Walk the chain; return the number of entries and every problem found, an anchor
    the chain no longer holds included."""
    entries = session.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all()
    head = session.get(AuditHead, 1)
    problems = list(_walk(entries))
    hashes = {entry.seq: entry.sha256 for entry in entries}
    for anchor in anchors:
        if hashes.get(anchor.seq) != anchor.sha256:
            problems.append(
                AuditProblem(anchor.seq, f"does not match the anchor {anchor}: log rewritten")
            )
    last_seq = entries[-1].seq if entries else 0
    last_hash = entries[-1].sha256 if entries else GENESIS_SHA256
    if head is not None and (head.seq, head.sha256) != (last_seq, last_hash):
        problems.append(
            AuditProblem(
                head.seq, f"head says entry {head.seq}, log ends at {last_seq}: rows deleted"
            )
        )
    return len(entries), problems


def hash_of_entry(entry: AuditEntry) -> str:
    """What ``entry.sha256`` must be, from its fields and ``entry.prev_sha256``."""
    return _entry_hash(
        entry.prev_sha256,
        seq=entry.seq,
        at=entry.at,
        actor=entry.actor,
        role=entry.role,
        action=entry.action,
        target=entry.target,
        details=entry.details,
    )


def _walk(entries: Iterable[AuditEntry]) -> Iterable[AuditProblem]:
    expected_seq, prev = 1, GENESIS_SHA256
    for entry in entries:
        if entry.seq != expected_seq:
            yield AuditProblem(entry.seq, f"expected entry {expected_seq}: rows deleted")
        if entry.prev_sha256 != prev:
            yield AuditProblem(entry.seq, "link to the previous entry is broken")
        if hash_of_entry(entry) != entry.sha256:
            yield AuditProblem(entry.seq, "entry was edited (hash mismatch)")
        expected_seq, prev = entry.seq + 1, entry.sha256


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored as UTC); PostgreSQL hands back aware ones
    # in the session's time zone. Hash one spelling of the instant.
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC)
