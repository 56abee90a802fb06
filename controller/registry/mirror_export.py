"""Write the released artifacts in the mirror layout, for any static HTTP server.

``<directory>/sha256/<hex>`` holds the bytes whose SHA-256 is ``<hex>``: the path a
deployment's mirror base URL is completed with (``protocol.mirror_artifact_url``), and
the one the controller's ``/artifacts`` route has.

Invariants:
- only what a device token may download is written: the model artifacts and check
  bundles that recorded releases name (``released_artifacts``), never validation sets or
  unreleased versions, since a mirror is usually readable by anyone;
- a file appears complete or not at all: it is written under a temporary name in the same
  directory (a hard link to the store's file when both are on one file system, else a
  copy, fsync'd) and renamed into place, and the directory is fsync'd;
- running it again writes nothing new: a file already there is kept when it is the
  store's own file (a hard link) or hashes right, and replaced when it does not (a
  damaged mirror copy is repaired).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session, col, select

from durable import fsync_dir

from ..errors import ControllerError, NotFoundError
from .artifact_store import ArtifactStore, sha256_of_file
from .released_artifacts import digests_named_by
from .tables import ReleaseRecord

__all__ = ["MirrorExport", "export_released_artifacts", "released_digests"]

# Errors of os.link that mean "not here": another file system, or one without hard links.
_NO_HARD_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


@dataclass
class MirrorExport:
    """What an export did, file by file."""

    releases: int = 0
    linked: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # named by a release, not in the store
    bytes_written: int = 0

    @property
    def artifacts(self) -> int:
        return len(self.linked) + len(self.copied) + len(self.unchanged)


def released_digests(session: Session, *, models: Iterable[str] = ()) -> tuple[int, list[str]]:
    """How many releases (of ``models``, or all) there are, and the digests they name."""
    query = select(ReleaseRecord)
    wanted = list(models)
    if wanted:
        query = query.where(col(ReleaseRecord.model_name).in_(wanted))
    rows = session.exec(query).all()
    digests: set[str] = set()
    for row in rows:
        digests |= digests_named_by(row)
    return len(rows), sorted(digests)


def export_released_artifacts(
    session: Session,
    store: ArtifactStore,
    directory: Path,
    *,
    models: Iterable[str] = (),
    copy: bool = False,
) -> MirrorExport:
    """Write every artifact the releases of ``models`` (or all) name into ``directory``."""
    count, digests = released_digests(session, models=models)
    result = MirrorExport(releases=count)
    target_dir = directory / "sha256"
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        for digest in digests:
            _export_one(store, digest, target_dir, result, copy=copy)
        fsync_dir(target_dir)
    except OSError as exc:
        raise ControllerError(f"cannot write the mirror layout in {directory}: {exc}") from exc
    return result


def _export_one(
    store: ArtifactStore, digest: str, target_dir: Path, result: MirrorExport, *, copy: bool
) -> None:
    try:
        stored = store.get(digest)
    except NotFoundError:
        result.missing.append(digest)
        return
    target = target_dir / digest
    if target.exists():
        if _same_file(stored.path, target) or sha256_of_file(target) == digest:
            result.unchanged.append(digest)
            return
        result.repaired.append(digest)
    temporary = target_dir / f".{digest}.{os.getpid()}.tmp"
    temporary.unlink(missing_ok=True)
    linked = False
    if not copy:
        try:
            os.link(stored.path, temporary)
            linked = True
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINK:
                raise
    try:
        if not linked:
            shutil.copyfile(stored.path, temporary)
            os.chmod(temporary, 0o444)
            with temporary.open("rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    (result.linked if linked else result.copied).append(digest)
    result.bytes_written += 0 if linked else stored.size_bytes


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
