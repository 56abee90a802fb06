"""Durable writes: a file on disk is either its old bytes or its new bytes, never torn.

The one home of atomic file writes for the agent (trust state, update journal, model
store, enrollment) and the controller (key directory, Mosquitto's password and ACL
files, artifacts). Standard library only.

Invariants:
- ``write_atomic`` writes to a temporary file in the destination's directory (so the
  rename never crosses a filesystem), gives it its mode (and, when asked, the owner of the
  file it replaces) before any byte is written, fsyncs it, ``os.replace``s it over the
  destination and fsyncs the directory, so the rename itself survives a power cut;
- a failure at any point leaves the destination untouched and removes the temporary file
  (a crash may leave a ``.NAME.*.tmp`` file behind; it is never read);
- ``read_json`` refuses files above a size cap before reading them.

Errors are the ``OSError``s of the system calls, untranslated: each caller says what
the file was in its own error (the agent's ``LocalWriteError``, the controller's
``KeyStoreError``, ...).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_STATE_FILE_BYTES",
    "PRIVATE_FILE_MODE",
    "PUBLIC_FILE_MODE",
    "fsync_dir",
    "fsync_file",
    "read_json",
    "write_atomic",
    "write_json_atomic",
]

# The trust state embeds a trust root envelope (at most 4 MiB on the wire).
MAX_STATE_FILE_BYTES = 8 * 1024 * 1024
# What mkstemp gives: only the owner reads state files, keys and credentials.
PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (creations, renames, removals) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE, keep_owner: bool = False
) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new bytes.

    The new file gets ``mode``; with ``keep_owner`` it also keeps the owner and group of
    the file it replaces (a file chown'ed to a service's user stays readable by it).
    """
    directory = path.parent
    old = path.stat() if keep_owner and path.exists() else None
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, mode)
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, old.st_uid, old.st_gid)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(directory)


def write_json_atomic(path: Path, value: Any) -> None:
    """``write_atomic`` of ``value`` as sorted, indented JSON (readable when debugging)."""
    text = json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    write_atomic(path, (text + "\n").encode("utf-8"))


def read_json(path: Path, *, max_bytes: int = MAX_STATE_FILE_BYTES) -> Any:
    """Parse a JSON file of at most ``max_bytes``.

    Raises ``FileNotFoundError`` (or another ``OSError``) when it cannot be read and
    ``ValueError`` when it is too large, not UTF-8 or not JSON; callers turn these into
    their own ``LocalStateError``.
    """
    with path.open("rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path} is larger than {max_bytes} bytes")
    return json.loads(data.decode("utf-8"))
