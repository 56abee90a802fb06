"""Which output holds class probabilities, and what each of its rows says.

The choice (``find_classifier``): an output is taken as class probabilities when the
reference profile has a ``class_distribution`` of ``K`` classes and the output is 2-D
float of width ``K``; without that hint, when ``tensors.profile.are_class_probabilities``
holds for it (the rule the converter applied to the reference). Per row
(``classify``): top-1 confidence is the row's maximum, the class its argmax; rows with a
NaN or an infinity are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tensors import are_class_probabilities

__all__ = ["Classifier", "classify", "find_classifier"]

_Counts = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Classifier:
    """The output taken as class probabilities, and its number of classes."""

    name: str
    width: int


def find_classifier(
    outputs: Mapping[str, np.ndarray], classes_hint: int | None
) -> tuple[bool, Classifier | None]:
    """Whether these outputs can tell, and which one holds class probabilities."""
    candidates = [
        (name, array)
        for name, array in outputs.items()
        if array.ndim == 2 and array.dtype.kind == "f"
    ]
    if any(array.shape[0] == 0 for _, array in candidates):
        return False, None  # an empty batch says nothing about the values
    if classes_hint is not None:
        for name, array in candidates:
            if array.shape[1] == classes_hint:
                return True, Classifier(name, classes_hint)
    for name, array in candidates:
        if are_class_probabilities(array):
            return True, Classifier(name, int(array.shape[1]))
    return True, None


def classify(scores: np.ndarray, width: int) -> tuple[int, float, _Counts] | None:
    """Rows, summed top-1 confidence and counts per class of the finite rows of ``scores``."""
    if scores.dtype.kind == "f":
        # Only rows that are entirely finite have a meaningful maximum and argmax.
        finite_rows = np.isfinite(scores).all(axis=1)
        if not finite_rows.all():
            scores = scores[finite_rows]
    if scores.shape[0] == 0:
        return None
    tops = scores.argmax(axis=1)
    confidence = np.take_along_axis(scores, tops[:, np.newaxis], axis=1).sum(dtype=np.float64)
    return int(scores.shape[0]), float(confidence), np.bincount(tops, minlength=width)
