"""``TensorSpec``: one model input or output, as its runtime reports it.

Invariants: a shape uses -1 for every free or symbolic dimension and nothing else below
zero; ``datatype`` is an Open Inference Protocol name, or the runtime's own type string
when the type has none (``is_oip`` tells which), so a spec of such a tensor never equals a
release's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .datatypes import FLOAT_DATATYPES, OIP_DATATYPES, numpy_dtype_of

__all__ = ["TensorSpec", "declared_bytes"]


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, datatype, shape with -1 for a free dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(dim < -1 for dim in self.shape):
            raise ValueError(f"{self.name}: negative dimension in {self.shape}")

    @property
    def is_oip(self) -> bool:
        """Whether ``datatype`` is an OIP name (not a runtime's type string)."""
        return self.datatype in OIP_DATATYPES

    @property
    def is_float(self) -> bool:
        return self.datatype in FLOAT_DATATYPES

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype; ``UnsupportedDatatypeError`` unless ``is_oip``."""
        return numpy_dtype_of(self.datatype)

    def to_json_obj(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def declared_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes a tensor of this shape needs; a dynamic dimension counts as 1 (a lower bound)."""
    return math.prod(max(dim, 1) for dim in shape) * itemsize
