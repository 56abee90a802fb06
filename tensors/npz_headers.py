"""Check an ``.npz`` archive's ``.npy`` headers before numpy reads any array from it.

numpy allocates the array an ``.npy`` header declares before it reads the data, so an
archive of a few bytes claiming shape ``(1e9, 64)`` costs 256 GB (or a ``MemoryError``),
and it parses headers of up to 10,000 characters. ``verify_npz_members`` reads only each
member's magic and header, through numpy's own header readers, and refuses:

- a member that is not an ``.npy`` array (numpy would hand back its raw bytes);
- a header longer than ``MAX_NPY_HEADER_BYTES`` (checked from its length field, before
  the header is read);
- a header whose shape and dtype declare more bytes than the member holds after it.

An array of Python objects holds a pickle, not its declared bytes: it is left to numpy,
whose ``allow_pickle=False`` refuses it. Each refusal is an ``UnsafeNpyError``, a
``ValueError``, so a reader that already turns numpy's ``ValueError`` into its own error
(``CheckBundleError``, ``BadValidationSetError``) refuses these the same way.
Nothing is allocated beyond a header.
"""

from __future__ import annotations

import math
import zipfile

import numpy as np

__all__ = ["MAX_NPY_HEADER_BYTES", "UnsafeNpyError", "verify_npz_members"]

# numpy pads its headers to 64 bytes; even 32 dimensions of 20 digits fit in 1 KiB.
MAX_NPY_HEADER_BYTES = 4096
_MAGIC = b"\x93NUMPY"


class UnsafeNpyError(ValueError):
    """An ``.npz`` member that must not be read: not ``.npy``, or its header lies."""


def verify_npz_members(npz: np.lib.npyio.NpzFile) -> None:
    """Raise ``UnsafeNpyError`` unless every member of the (open) ``np.load`` result is
    an ``.npy`` array that numpy can read without allocating more than the member holds."""
    archive = npz.zip
    if archive is None:
        raise UnsafeNpyError("the .npz is closed")
    for member in archive.infolist():
        _verify_member(archive, member)


def _verify_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> None:
    name = member.filename
    with archive.open(member) as handle:
        head = handle.read(len(_MAGIC) + 2 + 4)
    if len(head) < len(_MAGIC) + 4 or not head.startswith(_MAGIC):
        raise UnsafeNpyError(f"{name} is not a .npy array")
    version = (head[6], head[7])
    if version == (1, 0):
        header_bytes = int.from_bytes(head[8:10], "little")
    elif version in ((2, 0), (3, 0)) and len(head) == 12:
        header_bytes = int.from_bytes(head[8:12], "little")
    else:
        raise UnsafeNpyError(f"{name} is a .npy of unknown version {version}")
    if header_bytes > MAX_NPY_HEADER_BYTES:
        raise UnsafeNpyError(
            f"{name} has a header of {header_bytes} bytes; at most {MAX_NPY_HEADER_BYTES} "
            "are allowed"
        )
    with archive.open(member) as handle:
        np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        try:
            shape, _, dtype = read_header(handle, max_header_size=MAX_NPY_HEADER_BYTES)
        # ast.literal_eval: MemoryError or RecursionError on deeply nested expressions.
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
            raise UnsafeNpyError(f"{name} has an unreadable header: {exc}") from exc
        data_bytes = member.file_size - handle.tell()
    if any(dim < 0 for dim in shape):
        raise UnsafeNpyError(f"{name} declares a negative dimension: {list(shape)}")
    if dtype.hasobject:
        return  # a pickle: refused by numpy's allow_pickle=False, whatever its size
    declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if declared > data_bytes:
        raise UnsafeNpyError(
            f"{name} declares {dtype} {list(shape)} ({declared} bytes) but holds "
            f"{data_bytes} bytes of data"
        )
