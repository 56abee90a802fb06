"""Accepting a device's sample upload: checks, quota, content-addressed file, row.

Files live at ``<data dir>/samples/sha256/<first two hex>/<hex>``, written to a temp file,
fsync'd and renamed (as artifacts are). ``accept_sample`` keeps these invariants:

- the bytes' SHA-256 is the name the device gave, or nothing is stored (400);
- the bytes are a sample (``tensors.samples.read_sample``: size, stored members only, no
  pickle, headers that do not lie, metadata naming what the archive holds) or 400;
- the sample's ``device_id`` is the uploader's (its token says who it is), or 403;
- capture of the sample's model was ordered for this device (a capture order that turned
  it on, whether or not it has ended since: a sample kept in time may arrive late), or
  403: the controller stores only what it asked for;
- the same bytes twice are one file and one row (the second answer says "known");
- a device holds at most ``quota_bytes`` and ``quota_count`` of samples here: over it,
  ``SampleQuotaError`` and nothing stored. The check runs with the device's row locked,
  so concurrent uploads of one device cannot pass it together.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from durable import fsync_dir
from tensors.samples import SampleFormatError, read_sample

from ..devices.enrollment import device_of_token
from ..errors import (
    BadRequestError,
    NotFoundError,
    SampleDeviceMismatchError,
    SampleNotOrderedError,
    SampleQuotaError,
)
from ..tables import utcnow
from .tables import CaptureOrderRecord, SampleRecord

__all__ = [
    "SampleDeviceMismatchError",
    "SampleNotOrderedError",
    "SampleQuotaError",
    "SampleStore",
    "accept_sample",
    "delete_samples",
]


def _valid_sha256(sha256: str) -> bool:
    return len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)


@dataclass(frozen=True)
class SampleStore:
    root: Path

    def path_for(self, sha256: str) -> Path:
        if not _valid_sha256(sha256):
            raise NotFoundError(f"{sha256!r} is not a SHA-256 hex digest")
        return self.root / "sha256" / sha256[:2] / sha256

    def write(self, sha256: str, data: bytes) -> Path:
        target = self.path_for(sha256)
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o444)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        fsync_dir(target.parent)
        return target

    def read(self, sha256: str) -> bytes:
        try:
            return self.path_for(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"no sample sha256:{sha256}") from exc


def accept_sample(
    session: Session,
    store: SampleStore,
    *,
    token_id: str,
    sha256: str,
    data: bytes,
    max_bytes: int,
    quota_bytes: int,
    quota_count: int,
) -> tuple[SampleRecord, bool]:
    """Store the calling device's sample; (its row, whether it is new). See the module doc."""
    if not _valid_sha256(sha256):
        raise BadRequestError(f"{sha256!r} is not a SHA-256 hex digest")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BadRequestError("the body's SHA-256 is not the sample's name")
    device = device_of_token(session, token_id)
    try:
        sample = read_sample(data, max_bytes=max_bytes)
    except SampleFormatError as exc:
        raise BadRequestError(f"not a sample: {exc}") from exc
    if sample.meta.device_id != device.id:
        raise SampleDeviceMismatchError(
            f"device {device.id} may not upload a sample of device {sample.meta.device_id}"
        )
    ordered = session.exec(
        select(CaptureOrderRecord.id)
        .where(
            CaptureOrderRecord.device_id == device.id,
            CaptureOrderRecord.model_name == sample.meta.model,
            col(CaptureOrderRecord.off).is_(False),
        )
        .limit(1)
    ).first()
    if ordered is None:
        raise SampleNotOrderedError(
            f"capture of {sample.meta.model} was never turned on for device {device.id}"
        )
    known = session.get(SampleRecord, sha256)
    if known is not None:
        return known, False
    held_bytes, held_count = session.exec(
        select(func.coalesce(func.sum(SampleRecord.size_bytes), 0), func.count()).where(
            SampleRecord.device_id == device.id
        )
    ).one()
    if held_count + 1 > quota_count or held_bytes + len(data) > quota_bytes:
        raise SampleQuotaError(
            f"device {device.id} holds {held_count} samples ({held_bytes} bytes) here: "
            f"the quota is {quota_count} samples and {quota_bytes} bytes"
        )
    store.write(sha256, data)
    meta = sample.meta
    row = SampleRecord(
        sha256=sha256,
        device_id=device.id,
        model_name=meta.model,
        release_version=meta.release_version,
        captured_at=meta.captured_at,
        received_at=utcnow(),
        reason=meta.reason,
        confidence=meta.confidence,
        size_bytes=len(data),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # the same sample, stored by a concurrent upload
        known = session.get(SampleRecord, sha256)
        if known is None:
            raise
        return known, False
    return row, True


def delete_samples(
    session: Session,
    store: SampleStore,
    *,
    model: str,
    before: datetime | None = None,
    device_id: str | None = None,
) -> int:
    """Forget ``model``'s samples (captured before ``before``, of ``device_id``, when
    given): rows and files. Frees the devices' quota. Returns how many."""
    conditions = [col(SampleRecord.model_name) == model]
    if before is not None:
        conditions.append(col(SampleRecord.captured_at) < before)
    if device_id is not None:
        conditions.append(col(SampleRecord.device_id) == device_id)
    hashes = list(session.exec(select(SampleRecord.sha256).where(*conditions)).all())
    if hashes:
        session.execute(delete(SampleRecord).where(col(SampleRecord.sha256).in_(hashes)))
        session.flush()
    for sha256 in hashes:
        store.path_for(sha256).unlink(missing_ok=True)
    return len(hashes)
