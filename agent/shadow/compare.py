"""How a shadow model's outputs differ from the serving model's on the same request.

Pure numpy, no state: one request's two output maps in, one ``Comparison`` out.

- **Non-finite**: any NaN or infinity in a float output of the shadow; such a sample is
  counted, and nothing else is compared on it.
- **Agreement** (classifiers): the serving model's classifier output (``classes``) is
  compared row by row with the shadow's output of the same name and shape; rows where
  either model's scores are not all finite are left out. Each model's top-1 confidence is
  summed over the compared rows.
- **Distance** (every model): ``sum |shadow - serving| / sum |serving|`` over the float
  outputs both have. Integer outputs are compared for equality only.
- **Mismatched**: an output of the serving model the shadow lacks, or gives in another
  shape or kind of type: the candidate does not answer the same question, and the sample
  counts as failed (with distance 1) rather than being compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["Comparison", "compare_outputs"]


@dataclass(frozen=True)
class Comparison:
    nonfinite: bool
    # An output of the serving model the shadow lacks or gives in another shape or type:
    # counted as a failed sample (the candidate does not answer the same question).
    mismatched: bool = False
    compared_rows: int = 0
    agreed_rows: int = 0
    confidence_sum: float = 0.0
    serving_confidence_sum: float = 0.0
    distance: float = 0.0


def compare_outputs(
    serving: Mapping[str, np.ndarray],
    shadow: Mapping[str, np.ndarray],
    *,
    classifier: str | None,
) -> Comparison:
    """Compare one request's outputs; ``classifier`` names the class-score output."""
    for name, expected in serving.items():
        given = shadow.get(name)
        if (
            given is None
            or given.shape != expected.shape
            or given.dtype.kind != expected.dtype.kind
        ):
            return Comparison(nonfinite=False, mismatched=True, distance=1.0)
    for array in shadow.values():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            return Comparison(nonfinite=True)
    rows = agreed = 0
    confidence = serving_confidence = 0.0
    if classifier is not None:
        mine, theirs = serving.get(classifier), shadow.get(classifier)
        if mine is not None and theirs is not None and mine.shape == theirs.shape:
            finite = np.isfinite(mine).all(axis=1)
            mine, theirs = mine[finite], theirs[finite]
            mine_top, theirs_top = mine.argmax(axis=1), theirs.argmax(axis=1)
            rows = int(mine.shape[0])
            agreed = int(np.count_nonzero(mine_top == theirs_top))
            serving_confidence = float(mine.max(axis=1).sum(dtype=np.float64))
            confidence = float(theirs.max(axis=1).sum(dtype=np.float64))
    return Comparison(
        nonfinite=False,
        compared_rows=rows,
        agreed_rows=agreed,
        confidence_sum=max(confidence, 0.0),
        serving_confidence_sum=max(serving_confidence, 0.0),
        distance=_distance(serving, shadow),
    )


def _distance(serving: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> float:
    difference = scale = 0.0
    for name, mine in serving.items():
        theirs = shadow.get(name)
        if theirs is None or theirs.shape != mine.shape:
            return 1.0
        if mine.dtype.kind not in "fc":
            if not np.array_equal(mine, theirs):
                return 1.0
            continue
        if not np.isfinite(mine).all():
            continue  # the serving model's own non-finite output says nothing of the shadow
        mine64 = mine.astype(np.float64, copy=False)
        difference += float(np.abs(theirs.astype(np.float64, copy=False) - mine64).sum())
        scale += float(np.abs(mine64).sum())
    if difference == 0.0:
        return 0.0
    return min(difference / scale, 1.0) if scale > 0 else 1.0
