"""Check a validation set (``.npz``) against a model's I/O signature without loading it.

Only the zip directory and each array's ``.npy`` header are read: no array data, no
pickles. That is enough to refuse a set that cannot be used (missing inputs, unknown
names, mismatched sample counts, object arrays, a zip bomb) before it is stored.
"""

from __future__ import annotations

import ast
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tensors import UnsafeNpyError, verify_npz_members

from ..errors import ModelRejectedError

__all__ = ["ValidationSetSummary", "check_validation_set"]

NPY_MAGIC = b"\x93NUMPY"
MAX_HEADER_BYTES = 65536
LABELS = "labels"


@dataclass(frozen=True)
class ValidationSetSummary:
    samples: int
    arrays: dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype descr, shape)
    has_labels: bool


def _refuse(reason: str) -> ModelRejectedError:
    return ModelRejectedError(f"validation set: {reason}", "bad_validation_set")


def check_validation_set(
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    max_uncompressed_bytes: int,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> ValidationSetSummary:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _refuse(f"not an .npz archive: {exc}") from exc
    try:
        # Headers numpy would choke on (huge, nested) or that claim more than the member
        # holds: refused before anything reads them for real (tensors.npz_headers).
        with np.load(path, allow_pickle=False) as npz:
            verify_npz_members(npz)
    except (UnsafeNpyError, OSError, ValueError, zipfile.BadZipFile) as exc:
        archive.close()
        raise _refuse(str(exc)) from exc
    with archive:
        members = archive.infolist()
        total = sum(member.file_size for member in members)
        if total > max_uncompressed_bytes:
            raise _refuse(f"{total} bytes uncompressed exceed {max_uncompressed_bytes}")
        arrays = {
            member.filename.removesuffix(".npy"): _read_header(archive, member)
            for member in members
        }
    unknown = set(arrays) - set(input_names) - set(output_names) - {LABELS}
    if unknown:
        raise _refuse(f"arrays {sorted(unknown)} are neither model inputs, outputs nor labels")
    missing = set(input_names) - set(arrays)
    if missing:
        raise _refuse(f"model inputs {sorted(missing)} have no array")
    counts = {name: shape[0] if shape else -1 for name, (_, shape) in arrays.items()}
    if len(set(counts.values())) != 1 or -1 in counts.values():
        raise _refuse(f"arrays disagree on the number of samples (first axis): {counts}")
    samples = next(iter(counts.values()))
    if samples == 0:
        raise _refuse("no samples")
    for name, declared in (input_shapes or {}).items():
        _verify_sample_shape(name, arrays[name][1], declared)
    if LABELS in arrays and arrays[LABELS][0][1:] not in ("i1", "i2", "i4", "i8", "u1", "u2"):
        raise _refuse(f"labels must be integer class indices, not {arrays[LABELS][0]}")
    return ValidationSetSummary(samples, arrays, LABELS in arrays)


def _verify_sample_shape(name: str, shape: tuple[int, ...], declared: Sequence[int]) -> None:
    """One sample of input ``name`` must fit the model's shape past the batch axis.

    Caught here, at push time, rather than minutes later in a variant or release job.
    """
    sample, wanted = shape[1:], list(declared)[1:]
    fits = len(sample) == len(wanted) and all(
        want in (-1, got) for got, want in zip(sample, wanted, strict=True)
    )
    if not fits:
        shown = [("N" if dim == -1 else dim) for dim in wanted]
        raise _refuse(
            f"input {name!r}: samples of shape {list(sample)}, the model takes {shown} "
            "past the first axis"
        )


def _read_header(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> tuple[str, tuple[int, ...]]:
    if not member.filename.endswith(".npy") or "/" in member.filename:
        raise _refuse(f"unexpected member {member.filename!r}")
    with archive.open(member) as handle:
        head = handle.read(10)
        if len(head) < 10 or not head.startswith(NPY_MAGIC):
            raise _refuse(f"{member.filename} is not a .npy array")
        major = head[6]
        if major == 1:
            length = int.from_bytes(head[8:10], "little")
            header = handle.read(length)
        elif major in (2, 3):
            length = int.from_bytes(head[8:10] + handle.read(2), "little")
            if length > MAX_HEADER_BYTES:
                raise _refuse(f"{member.filename} has an oversized header")
            header = handle.read(length)
        else:
            raise _refuse(f"{member.filename} has unknown .npy version {major}")
    try:
        meta: Any = ast.literal_eval(header.decode("latin-1"))
        descr, shape = meta["descr"], tuple(int(d) for d in meta["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError) as exc:
        raise _refuse(f"{member.filename} has an unreadable header") from exc
    if not isinstance(descr, str) or descr[1:2] == "O" or "O" in descr:
        raise _refuse(f"{member.filename} holds Python objects; only numeric arrays are allowed")
    return descr, shape
