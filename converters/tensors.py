"""Tensor descriptions in Open Inference Protocol terms, and their wire encoding.

Invariants: every datatype named here is one of the twelve OIP datatypes; a shape uses -1
for a dynamic or symbolic dimension and nothing else below zero; encoded tensor data is
the base64 of little-endian, row-major bytes whose length matches datatype size times shape.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import UnsupportedDatatypeError

__all__ = [
    "DATATYPE_BYTES",
    "Array",
    "TensorSpec",
    "datatype_of_numpy",
    "declared_bytes",
    "encode_tensor",
    "numpy_dtype_of",
]

Array = npt.NDArray[Any]

DATATYPE_BYTES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "FP32": 4,
    "FP64": 8,
}

_NUMPY_DATATYPES: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
_DATATYPE_NUMPY = {datatype: name for name, datatype in _NUMPY_DATATYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, OIP datatype, shape with -1 for a free dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPE_BYTES:
            raise UnsupportedDatatypeError(f"{self.name}: {self.datatype} is no OIP datatype")
        if any(dim < -1 for dim in self.shape):
            raise UnsupportedDatatypeError(f"{self.name}: negative dimension in {self.shape}")

    @property
    def dtype(self) -> np.dtype[Any]:
        return numpy_dtype_of(self.datatype)

    @property
    def is_float(self) -> bool:
        return self.datatype in {"FP16", "FP32", "FP64"}

    def to_json_obj(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def datatype_of_numpy(dtype: npt.DTypeLike, *, name: str) -> str:
    """The OIP datatype of a numpy dtype, or ``UnsupportedDatatypeError``."""
    key = np.dtype(dtype).name
    try:
        return _NUMPY_DATATYPES[key]
    except KeyError:
        raise UnsupportedDatatypeError(
            f"tensor {name!r} has dtype {key}, which has no OIP datatype"
        ) from None


def numpy_dtype_of(datatype: str) -> np.dtype[Any]:
    return np.dtype(_DATATYPE_NUMPY[datatype])


def declared_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes a tensor of this shape needs; a dynamic dimension counts as 1 (a lower bound)."""
    return math.prod(max(dim, 1) for dim in shape) * itemsize


def encode_tensor(name: str, array: Array) -> dict[str, Any]:
    """A concrete tensor as ``{name, datatype, shape, data}`` with base64 little-endian data."""
    datatype = datatype_of_numpy(array.dtype, name=name)
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return {
        "name": name,
        "datatype": datatype,
        "shape": [int(dim) for dim in array.shape],
        "data": base64.b64encode(little.tobytes()).decode("ascii"),
    }
