"""The one datatype table: Open Inference Protocol names, numpy, ONNX Runtime, LiteRT.

The OIP (KServe v2) vocabulary belongs to ``protocol``, whose signed documents check tensor
byte sizes with it (``protocol.release.DATATYPE_BYTES``, the ``Datatype`` literal); this
module maps those names to what the runtimes say, and is the only place that does.

Invariants:
- the table's OIP names are exactly protocol's, and each numpy itemsize is protocol's byte
  size (``tests/tensors/test_datatypes.py`` checks both);
- every column is one-to-one: a name maps to one numpy dtype and one ONNX Runtime type
  string, and back;
- LiteRT reports numpy dtypes, so the numpy column serves it; byte order is ignored;
- a runtime type with no OIP name (``tensor(string)``, ``seq(...)``, ``complex64``) is in
  no column: ``datatype_of_*`` return ``None`` and ``numpy_dtype_of``/``ort_type_of``
  raise ``UnsupportedDatatypeError``. Whether that refuses a model or merely keeps the
  runtime's string (which then matches no release) is the caller's decision.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.release import DATATYPE_BYTES, Datatype

from .errors import UnsupportedDatatypeError

__all__ = [
    "DATATYPE_BYTES",
    "FLOAT_DATATYPES",
    "OIP_DATATYPES",
    "Datatype",
    "datatype_of_numpy",
    "datatype_of_ort",
    "numpy_dtype_of",
    "ort_type_of",
    "reported_datatype",
]

# (OIP name, numpy dtype name, ONNX Runtime type string)
_TABLE: tuple[tuple[Datatype, str, str], ...] = (
    ("BOOL", "bool", "tensor(bool)"),
    ("UINT8", "uint8", "tensor(uint8)"),
    ("UINT16", "uint16", "tensor(uint16)"),
    ("UINT32", "uint32", "tensor(uint32)"),
    ("UINT64", "uint64", "tensor(uint64)"),
    ("INT8", "int8", "tensor(int8)"),
    ("INT16", "int16", "tensor(int16)"),
    ("INT32", "int32", "tensor(int32)"),
    ("INT64", "int64", "tensor(int64)"),
    ("FP16", "float16", "tensor(float16)"),
    ("FP32", "float32", "tensor(float)"),
    ("FP64", "float64", "tensor(double)"),
)

OIP_DATATYPES: frozenset[str] = frozenset(DATATYPE_BYTES)
FLOAT_DATATYPES: frozenset[str] = frozenset({"FP16", "FP32", "FP64"})

_NUMPY_OF: dict[str, np.dtype[Any]] = {oip: np.dtype(name) for oip, name, _ in _TABLE}
_ORT_OF: dict[str, str] = {oip: ort for oip, _, ort in _TABLE}
_OF_NUMPY: dict[str, str] = {name: oip for oip, name, _ in _TABLE}
_OF_ORT: dict[str, str] = {ort: oip for oip, _, ort in _TABLE}


def numpy_dtype_of(datatype: str) -> np.dtype[Any]:
    """The native-order numpy dtype of an OIP datatype."""
    try:
        return _NUMPY_OF[datatype]
    except KeyError:
        raise UnsupportedDatatypeError(
            f"{datatype} is no OIP datatype", datatype=datatype
        ) from None


def ort_type_of(datatype: str) -> str:
    """The ONNX Runtime type string (``tensor(float)``) of an OIP datatype."""
    try:
        return _ORT_OF[datatype]
    except KeyError:
        raise UnsupportedDatatypeError(
            f"{datatype} is no OIP datatype", datatype=datatype
        ) from None


def datatype_of_numpy(dtype: npt.DTypeLike) -> str | None:
    """The OIP datatype of a numpy dtype (or of what LiteRT reports), or ``None``."""
    return _OF_NUMPY.get(np.dtype(dtype).name)


def datatype_of_ort(type_string: str) -> str | None:
    """The OIP datatype of an ONNX Runtime type string, or ``None``."""
    return _OF_ORT.get(type_string)


def reported_datatype(dtype: npt.DTypeLike) -> str:
    """The OIP datatype of a numpy dtype, or numpy's own name when it has none.

    What a backend reports for a LiteRT tensor, and what responses and messages name.
    """
    name = np.dtype(dtype).name
    return _OF_NUMPY.get(name, name)
