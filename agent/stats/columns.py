"""The arrays of a batch of requests by tensor name, stacked for one numpy pass each.

Invariant: each figure a ``Column`` gives is the one its arrays would give one by one:
the owners with a NaN or an infinity, the classified rows and their counts, the numbers
to count for drift. Stacking is only a way to get there in one call.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tensors.profile import feature_axis

from .classes import classify

__all__ = ["Arrays", "Column", "columns_of"]

Arrays = Mapping[str, np.ndarray]
_Counts = npt.NDArray[np.int64]


def columns_of(mappings: Sequence[Arrays | None]) -> dict[str, Column]:
    """The arrays of a batch by tensor name; ``owners`` index ``mappings``."""
    present = [mapping for mapping in mappings if mapping]
    if len(present) == len(mappings):
        owners = list(range(len(mappings)))
    else:
        owners = [index for index, mapping in enumerate(mappings) if mapping]
    if not present:
        return {}
    names = list(present[0])
    # Usually every request has the same outputs: one list per name, no per-array lookups.
    if sum(map(len, present)) == len(names) * len(present):
        try:
            return {name: Column(owners, [m[name] for m in present]) for name in names}
        except KeyError:
            pass  # as many names, but not the same ones
    by_name: dict[str, tuple[list[int], list[np.ndarray]]] = {}
    for index, mapping in zip(owners, present, strict=True):
        for name, array in mapping.items():
            column = by_name.get(name)
            if column is None:
                by_name[name] = column = ([], [])
            column[0].append(index)
            column[1].append(array)
    return {name: Column(*column) for name, column in by_name.items()}


class Column:
    """One tensor name across a batch: the requests that had it, their arrays, and the
    arrays stacked along axis 0 into one, so each figure is one numpy pass.

    ``stacked`` is ``None`` when they do not stack: 0-d arrays, different trailing
    shapes, or a dtype that is not a number (numbers always promote to a common dtype).
    Then each figure falls back to the arrays one by one.
    """

    __slots__ = ("_stacked", "_unstacked", "arrays", "dtypes", "owners")

    def __init__(self, owners: list[int], arrays: list[np.ndarray]) -> None:
        self.owners = owners
        self.arrays = arrays
        self.dtypes = {array.dtype for array in arrays}
        self._stacked: np.ndarray | None = None
        self._unstacked = True  # stacked on first use: a column of labels never is

    @property
    def stacked(self) -> np.ndarray | None:
        if self._unstacked:
            self._unstacked = False
            self._stacked = _stack(self.arrays, self.dtypes)
        return self._stacked

    def nonfinite_owners(self) -> set[int]:
        """The owners whose array holds a NaN or an infinity."""
        if not any(dtype.kind in "fc" for dtype in self.dtypes):
            return set()
        stacked = self.stacked
        if stacked is None:
            return {
                owner
                for owner, array in zip(self.owners, self.arrays, strict=True)
                if array.dtype.kind in "fc" and not np.isfinite(array).all()
            }
        # Not via the sum: inf - inf and overflow would raise numpy warnings.
        finite = np.isfinite(stacked)
        if finite.all():
            return set()
        # Element j of the stack belongs to the first array whose end is past j.
        ends = np.cumsum([array.size for array in self.arrays])
        hits = np.unique(ends.searchsorted(np.flatnonzero(~finite), side="right"))
        return {self.owners[hit] for hit in hits.tolist()}

    def classified(self, start: int, width: int) -> tuple[int, float, _Counts] | None:
        """Rows, summed top-1 confidence and counts per class, from owner ``start`` on."""
        skip = bisect_left(self.owners, start)
        stacked = self.stacked
        if (
            stacked is not None
            and stacked.ndim == 2
            and stacked.shape[1] == width
            and stacked.dtype.kind in "biuf"
        ):
            if skip:
                stacked = stacked[sum(array.shape[0] for array in self.arrays[:skip]) :]
            return classify(stacked, width)
        fitting = [
            array
            for array in self.arrays[skip:]
            if array.ndim == 2 and array.shape[1] == width and array.dtype.kind in "biuf"
        ]
        if not fitting:
            return None
        return classify(np.concatenate(fitting, axis=0), width)

    def feature_values(self, index: int) -> np.ndarray | None:
        """The numbers of feature or channel ``index`` (``tensors.feature_axis``),
        flattened; None when the arrays have no such feature."""
        stacked = self.stacked
        arrays = [stacked] if stacked is not None else self.arrays
        picked = []
        for array in arrays:
            axis = feature_axis(array.shape)
            if axis is None or index >= array.shape[axis] or array.dtype.kind not in "biuf":
                continue
            picked.append(np.take(array, index, axis=axis).ravel())
        if not picked:
            return None
        return picked[0] if len(picked) == 1 else np.concatenate(picked)

    def values(self) -> np.ndarray | None:
        """Every number of the column, flattened (strings and the like left out)."""
        stacked = self.stacked
        if stacked is not None and stacked.dtype.kind in "biuf":
            return stacked.ravel()
        numeric = [array for array in self.arrays if array.dtype.kind in "biuf"]
        return np.concatenate(numeric, axis=None) if numeric else None


def _stack(arrays: list[np.ndarray], dtypes: set[np.dtype[Any]]) -> np.ndarray | None:
    if not all(dtype.kind in "biufc" for dtype in dtypes):
        return None
    if len(arrays) == 1:
        return arrays[0]
    try:
        return np.concatenate(arrays, axis=0)
    except ValueError:  # 0-d arrays or different trailing shapes
        return None
