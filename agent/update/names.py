"""Names the agent turns into paths: artifact file names and SHA-256 digests.

Invariant: a name that passes ``verify_safe_file_name`` is one path component that stays
inside the directory it is joined to, on POSIX and Windows alike. The protocol schema
already restricts file names (docs/protocol.md §1.3); this is defence in depth, checked
again right before a name touches the file system, so a loosened schema or a bug
upstream cannot become a path traversal.
"""

from __future__ import annotations

import re

from ..errors import StoreError, UnsafeFileNameError

__all__ = [
    "MAX_FILE_NAME_CHARS",
    "check_bundle_name",
    "verify_safe_file_name",
    "verify_sha256_hex",
]

MAX_FILE_NAME_CHARS = 128
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Characters that separate or end path components somewhere (POSIX, Windows, NUL).
_FORBIDDEN_CHARS = frozenset("/\\\x00:")


def verify_safe_file_name(name: str) -> str:
    """Return ``name`` if it is a plain file name; raise ``UnsafeFileNameError`` if not."""
    if not name or name in {".", ".."}:
        raise UnsafeFileNameError(f"file name {name!r} is empty or a directory reference")
    if len(name) > MAX_FILE_NAME_CHARS:
        raise UnsafeFileNameError(f"file name of {len(name)} characters is too long")
    if ".." in name:
        raise UnsafeFileNameError(f"file name {name!r} contains '..'")
    if any(char in _FORBIDDEN_CHARS for char in name):
        raise UnsafeFileNameError(f"file name {name!r} contains a path separator or NUL")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        raise UnsafeFileNameError(f"file name {name!r} contains a control character")
    if name.startswith(("-", "~")) or name != name.strip():
        # Not traversal, but names that shells, tools and humans misread.
        raise UnsafeFileNameError(f"file name {name!r} starts or ends ambiguously")
    return name


def verify_sha256_hex(digest: str) -> str:
    """Return ``digest`` if it is 64 lowercase hex digits; else ``StoreError``."""
    if not _SHA256_HEX.fullmatch(digest):
        raise StoreError(f"{digest!r} is not a lowercase hex SHA-256")
    return digest


def check_bundle_name(sha256: str) -> str:
    """The file name of a check bundle inside its model's store directory."""
    return f"check-bundle-{verify_sha256_hex(sha256)}.npz"
