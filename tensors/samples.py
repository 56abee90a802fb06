"""Captured samples as bytes, and many of them as one training dataset.

A sample is an uncompressed ``.npz``: each input as ``input:<name>``, each output as
``output:<name>``, and ``meta``, the canonical JSON of its ``protocol.SampleMeta`` as
``uint8``. Its SHA-256 is its name, on the device and on the controller.

``read_sample`` takes untrusted bytes (an upload) and returns the sample or raises
``SampleFormatError``. It refuses, before numpy allocates anything: more than
``max_bytes``, anything that is not a zip of stored (uncompressed, so no zip bomb)
``.npy`` members whose headers declare no more than they hold (``npz_headers``), object
arrays (no pickle is ever loaded), a member that is not ``meta``, ``input:*`` or
``output:*``, metadata that is not a ``SampleMeta`` or names other tensors than the
archive holds.

``dataset_of`` stacks samples into one dataset a training job reads with ``numpy.load``:
per tensor name, the samples' arrays concatenated along axis 0 (the batch axis), and per
row, where it came from (see ``DATASET_FIELDS``). Samples whose tensors do not stack
with the first one's (another shape or dtype) are left out and counted.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import ValidationError

from protocol import SampleMeta, canonical_json

from .errors import TensorsError
from .npz_headers import verify_npz_members

__all__ = [
    "DATASET_FIELDS",
    "INPUT_PREFIX",
    "META_KEY",
    "OUTPUT_PREFIX",
    "Dataset",
    "Sample",
    "SampleFormatError",
    "dataset_of",
    "read_sample",
    "write_sample",
]

META_KEY = "meta"
INPUT_PREFIX = "input:"
OUTPUT_PREFIX = "output:"
MAX_META_BYTES = 16 * 1024
# Per row of a dataset: the sample's name, device, model, release, time and reason.
DATASET_FIELDS = (
    "sha256",
    "device_id",
    "model",
    "release_version",
    "captured_at",
    "reason",
    "confidence",
)


class SampleFormatError(TensorsError):
    """Bytes that are not a captured sample (or one over its size limit)."""


@dataclass(frozen=True)
class Sample:
    meta: SampleMeta
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


def write_sample(
    meta: SampleMeta, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
) -> bytes:
    """The sample's bytes; ``meta`` must name exactly these inputs and outputs."""
    if sorted(meta.inputs) != sorted(inputs) or sorted(meta.outputs) != sorted(outputs):
        raise ValueError("meta must name the sample's inputs and outputs")
    arrays: dict[str, np.ndarray] = {
        META_KEY: np.frombuffer(canonical_json(meta.model_dump(mode="json")), dtype=np.uint8)
    }
    arrays |= {INPUT_PREFIX + name: np.asarray(array) for name, array in inputs.items()}
    arrays |= {OUTPUT_PREFIX + name: np.asarray(array) for name, array in outputs.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def read_sample(data: bytes, *, max_bytes: int) -> Sample:
    """The sample in ``data``; raises ``SampleFormatError`` (see the module's docstring)."""
    if len(data) > max_bytes:
        raise SampleFormatError(f"a sample of {len(data)} bytes is over {max_bytes}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise SampleFormatError(f"not an .npz: {exc}") from exc
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED or member.file_size > max_bytes:
            raise SampleFormatError(f"{member.filename}: only stored members are read")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            verify_npz_members(npz)
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise SampleFormatError(f"unreadable .npz: {exc}") from exc
    meta_array = arrays.pop(META_KEY, None)
    if meta_array is None or meta_array.dtype != np.uint8 or meta_array.size > MAX_META_BYTES:
        raise SampleFormatError(f"no {META_KEY!r} of at most {MAX_META_BYTES} bytes")
    try:
        meta = SampleMeta.model_validate(json.loads(meta_array.tobytes()))
    except (ValueError, ValidationError) as exc:
        raise SampleFormatError(f"bad sample metadata: {exc}") from exc
    inputs: dict[str, np.ndarray] = {}
    outputs: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        if array.dtype.hasobject:
            raise SampleFormatError(f"{key}: object arrays are refused")
        if key.startswith(INPUT_PREFIX):
            inputs[key.removeprefix(INPUT_PREFIX)] = array
        elif key.startswith(OUTPUT_PREFIX):
            outputs[key.removeprefix(OUTPUT_PREFIX)] = array
        else:
            raise SampleFormatError(f"unexpected member {key!r}")
    if sorted(meta.inputs) != sorted(inputs) or sorted(meta.outputs) != sorted(outputs):
        raise SampleFormatError("the metadata names other tensors than the sample holds")
    return Sample(meta, inputs, outputs)


@dataclass
class Dataset:
    """Arrays for ``numpy.savez``; ``skipped`` samples did not stack with the rest."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    samples: int = 0
    rows: int = 0
    skipped: int = 0


def _rows_of(sample: Sample) -> int:
    first = next(iter(sample.inputs.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim > 0 else 1


def _layout(sample: Sample) -> dict[str, tuple[tuple[int, ...], str]]:
    tensors = {INPUT_PREFIX + k: v for k, v in sample.inputs.items()}
    tensors |= {OUTPUT_PREFIX + k: v for k, v in sample.outputs.items()}
    return {key: (array.shape[1:], array.dtype.str) for key, array in tensors.items()}


def dataset_of(samples: Sequence[tuple[str, Sample]]) -> Dataset:
    """One dataset of ``(sha256, sample)`` pairs, in the order given (see the module doc)."""
    dataset = Dataset()
    layout: dict[str, tuple[tuple[int, ...], str]] | None = None
    tensors: dict[str, list[np.ndarray]] = {}
    fields: dict[str, list[object]] = {name: [] for name in DATASET_FIELDS}
    for sha256, sample in samples:
        rows = _rows_of(sample)
        this = _layout(sample)
        if layout is None:
            layout = this
        # Every tensor at least 1-D with ``rows`` rows, and the same layout as the first.
        arrays = {INPUT_PREFIX + k: v for k, v in sample.inputs.items()}
        arrays |= {OUTPUT_PREFIX + k: v for k, v in sample.outputs.items()}
        if this != layout or any(a.ndim == 0 or a.shape[0] != rows for a in arrays.values()):
            dataset.skipped += 1
            continue
        for key, array in arrays.items():
            tensors.setdefault(key, []).append(array)
        meta = sample.meta
        row_fields: dict[str, object] = {
            "sha256": sha256,
            "device_id": meta.device_id,
            "model": meta.model,
            "release_version": meta.release_version or 0,
            "captured_at": meta.captured_at.isoformat(),
            "reason": meta.reason,
            "confidence": np.nan if meta.confidence is None else meta.confidence,
        }
        for name, value in row_fields.items():
            fields[name].extend([value] * rows)
        dataset.samples += 1
        dataset.rows += rows
    dataset.arrays = {key: np.concatenate(parts, axis=0) for key, parts in tensors.items()}
    dataset.arrays |= {
        "sha256": np.array(fields["sha256"], dtype="U64"),
        "device_id": np.array(fields["device_id"], dtype=str),
        "model": np.array(fields["model"], dtype=str),
        "release_version": np.array(fields["release_version"], dtype=np.int64),
        "captured_at": np.array(fields["captured_at"], dtype=str),
        "reason": np.array(fields["reason"], dtype=str),
        "confidence": np.array(fields["confidence"], dtype=np.float64),
    }
    return dataset
