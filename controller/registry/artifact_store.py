"""Content-addressed files: ``artifacts/sha256/<first two hex>/<hex>``.

Invariants: a stored file's name is the SHA-256 of its bytes, so a file is written once
and never changes; writes go to a temp file in the same directory, are fsync'd and then
renamed, so a reader never sees a partial artifact.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from durable import fsync_dir

from ..errors import NotFoundError

__all__ = ["ArtifactStore", "StoredFile", "sha256_of_file"]

READ_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    size_bytes: int
    path: Path


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ArtifactStore:
    root: Path

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise NotFoundError(f"{sha256!r} is not a SHA-256 hex digest")
        return self.root / "sha256" / sha256[:2] / sha256

    def get(self, sha256: str) -> StoredFile:
        path = self.path_for(sha256)
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise NotFoundError(f"no artifact sha256:{sha256}") from exc
        return StoredFile(sha256, size, path)

    def put(self, source: Path) -> StoredFile:
        """Move ``source`` (a temp file on the same file system) into the store."""
        sha256 = sha256_of_file(source)
        target = self.path_for(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            source.unlink()
        else:
            with source.open("rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(source, 0o444)
            os.replace(source, target)
            fsync_dir(target.parent)
        return StoredFile(sha256, target.stat().st_size, target)
