"""Validation sets: an ``.npz`` that must fit the model, or seeded inputs made from its spec.

The npz holds one array per model input under the input's name, first axis = samples;
optionally ``labels`` (integer class indices, one per sample) for accuracy; or, instead,
one array per model output under the output's name with reference outputs. It is loaded
with ``allow_pickle=False``: an npz is data, never code. Its ``.npy`` headers are checked
first (``tensors.npz_headers``): a header over 4 KiB, or one that declares more bytes than
its member holds, is a ``BadValidationSetError`` before numpy allocates anything.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tensors import Array, TensorSpec, verify_npz_members

from .errors import BadValidationSetError

__all__ = [
    "GENERATED_SAMPLES",
    "ValidationSet",
    "batch_size_of",
    "generate_inputs",
    "iter_batches",
    "load_validation_set",
]

LABELS_KEY = "labels"
GENERATED_SAMPLES = 64
DYNAMIC_BATCH_SIZE = 32


@dataclass(frozen=True)
class ValidationSet:
    """Inputs by name (same number of samples each), and what to compare outputs with."""

    inputs: dict[str, Array]
    labels: Array | None
    reference_outputs: dict[str, Array] | None
    source: Literal["validation", "generated"]

    @property
    def samples(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


def _fits(spec: TensorSpec, array: Array) -> bool:
    if len(spec.shape) != array.ndim:
        return False
    return all(want in (-1, got) for want, got in zip(spec.shape[1:], array.shape[1:], strict=True))


def _cast(spec: TensorSpec, array: Array, what: str) -> Array:
    if array.dtype == spec.dtype:
        return array
    if np.can_cast(array.dtype, spec.dtype, casting="same_kind") or (
        spec.is_float and array.dtype.kind in "iub"
    ):
        return array.astype(spec.dtype)
    raise BadValidationSetError(
        f"{what} {spec.name!r} is {array.dtype}, the model wants {spec.datatype}"
    )


def load_validation_set(
    path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> ValidationSet:
    """Read and check an npz against the model's signature; raises ``BadValidationSetError``."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise BadValidationSetError(f"{path.name} is a single .npy array, not an .npz")
        with loaded as npz:
            verify_npz_members(npz)
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BadValidationSetError(
            f"{path.name} is not a readable npz without pickles: {exc}"
        ) from exc
    missing = [spec.name for spec in inputs if spec.name not in arrays]
    if missing:
        raise BadValidationSetError(
            f"{path.name} has no array for model input(s) {missing}; it has {sorted(arrays)}"
        )
    feeds = {spec.name: _cast(spec, arrays[spec.name], "input") for spec in inputs}
    counts = {name: array.shape[0] if array.ndim else 0 for name, array in feeds.items()}
    samples = next(iter(counts.values()))
    if samples == 0 or len(set(counts.values())) != 1:
        raise BadValidationSetError(f"inputs need the same, non-zero number of samples: {counts}")
    for spec in inputs:
        if not _fits(spec, feeds[spec.name]):
            raise BadValidationSetError(
                f"input {spec.name!r} has shape {list(feeds[spec.name].shape)}, "
                f"the model wants {list(spec.shape)} (first axis = samples)"
            )
    labels = arrays.get(LABELS_KEY)
    if labels is not None and (
        labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != samples
    ):
        raise BadValidationSetError(
            f"labels must be {samples} integer class indices, "
            f"got {labels.dtype}{list(labels.shape)}"
        )
    reference = {spec.name: arrays[spec.name] for spec in outputs if spec.name in arrays}
    for name, array in reference.items():
        if array.ndim == 0 or array.shape[0] != samples:
            raise BadValidationSetError(f"reference output {name!r} needs {samples} samples")
    return ValidationSet(feeds, labels, reference or None, "validation")


def generate_inputs(
    inputs: Sequence[TensorSpec], *, samples: int = GENERATED_SAMPLES, seed: int = 0
) -> ValidationSet:
    """Seeded random inputs from the spec: normal floats, small integers, free dims of 1."""
    rng = np.random.default_rng(seed)
    batch = batch_size_of(inputs) or 1
    samples = max(batch, samples - samples % batch)
    feeds: dict[str, Array] = {}
    for spec in inputs:
        shape = (samples, *(max(dim, 1) for dim in spec.shape[1:]))
        if spec.is_float:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.datatype == "BOOL":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
    return ValidationSet(feeds, None, None, "generated")


def batch_size_of(inputs: Sequence[TensorSpec]) -> int | None:
    """The fixed first dimension all inputs share, or None when the batch is free."""
    fixed = {spec.shape[0] for spec in inputs if spec.shape and spec.shape[0] > 0}
    if len(fixed) > 1:
        raise BadValidationSetError(f"inputs disagree on their batch dimension: {sorted(fixed)}")
    return fixed.pop() if fixed else None


def iter_batches(inputs: dict[str, Array], fixed_batch: int | None) -> Iterator[dict[str, Array]]:
    """Consecutive batches; a model with a fixed batch size gets only full batches."""
    batch = fixed_batch or DYNAMIC_BATCH_SIZE
    samples = int(next(iter(inputs.values())).shape[0])
    for start in range(0, samples, batch):
        chunk = {name: array[start : start + batch] for name, array in inputs.items()}
        if fixed_batch is None or next(iter(chunk.values())).shape[0] == fixed_batch:
            yield chunk
