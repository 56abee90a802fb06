"""Which artifacts releases name: all that a device token may download.

A device needs the model artifact and the check bundle of the releases it is sent, and
nothing else the store holds: not validation sets, not versions or variants that were
never released.

Invariants:
- a digest is allowed only when a recorded release names it, as its artifact
  (``releases.sha256``) or in its signed envelope (the check bundle);
- releases are never changed once recorded, so what one names is read from its envelope
  once and kept; a digest no known release names makes this read the releases recorded
  since (by any replica) before it answers no, so a new release is never refused.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field

from sqlmodel import Session, col, select

from protocol import Envelope, ProtocolError

from .tables import ReleaseRecord

__all__ = ["ReleasedArtifacts", "digests_named_by"]

logger = logging.getLogger(__name__)

# Releases read per query when catching up (SQLite caps the parameters of a statement).
_READ_BATCH = 500


@dataclass
class ReleasedArtifacts:
    """The digests that recorded releases name, read lazily and kept for the app's life."""

    _digests: set[str] = field(default_factory=set, init=False, repr=False)
    _release_ids: set[int] = field(default_factory=set, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def names(self, session: Session, sha256: str) -> bool:
        """True when a recorded release names the artifact ``sha256``."""
        with self._lock:
            if sha256 in self._digests:
                return True
            known = set(self._release_ids)
        recorded = session.exec(select(ReleaseRecord.id)).all()
        new = sorted({rid for rid in recorded if rid is not None} - known)
        named: dict[int, set[str]] = {}
        for start in range(0, len(new), _READ_BATCH):
            batch = new[start : start + _READ_BATCH]
            rows = session.exec(select(ReleaseRecord).where(col(ReleaseRecord.id).in_(batch)))
            for row in rows:
                named[row.id or 0] = digests_named_by(row)
        with self._lock:
            for release_id, digests in named.items():
                self._release_ids.add(release_id)
                self._digests.update(digests)
            return sha256 in self._digests


def digests_named_by(row: ReleaseRecord) -> set[str]:
    digests = {row.sha256}
    try:
        payload = json.loads(Envelope.from_bytes(row.envelope.encode("utf-8")).payload)
    except (ProtocolError, ValueError) as exc:
        logger.warning(
            "release %s:%s has an unreadable envelope: %s", row.model_name, row.version, exc
        )
        return digests
    # Read as plain JSON, not as a ``Release``: releases of every schema version count.
    if isinstance(payload, dict):
        for reference in (payload.get("artifact"), payload.get("check_bundle")):
            if isinstance(reference, dict) and isinstance(reference.get("sha256"), str):
                digests.add(reference["sha256"])
    return digests
