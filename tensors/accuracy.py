"""Whether a model's accuracy on labeled requests fell, by more than a limit, beyond noise.

Shared by the agent's probation (the new model against the previous one on one device) and
the controller's rollout gate (updated devices against the control group): labels come
back for a small share of requests, and at 100 labels an accuracy of 0.90 reads anywhere
from about 0.84 to 0.96. A drop is therefore judged by its one-sided lower confidence
bound: ``drop - Z * SE`` with the two proportions' standard error, and it counts as
exceeding ``limit`` only when that bound does (``Z = 2.326``: a model whose accuracy truly
fell by exactly ``limit`` is failed at most one time in a hundred). Below ``MIN_LABELED``
labels on either side nothing is judged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MIN_LABELED", "Z_ONE_SIDED_99", "AccuracyDrop", "accuracy_drop"]

MIN_LABELED = 30
Z_ONE_SIDED_99 = 2.326


@dataclass(frozen=True)
class AccuracyDrop:
    before: float  # the reference's accuracy (previous model, control group)
    after: float
    drop: float  # before - after
    lower_bound: float  # drop - Z * SE: the least drop the labels support

    def exceeds(self, limit: float) -> bool:
        return self.lower_bound > limit


def accuracy_drop(
    before_labeled: int, before_correct: int, labeled: int, correct: int
) -> AccuracyDrop | None:
    """The drop of accuracy from ``before`` to now; None below ``MIN_LABELED`` on a side."""
    if min(before_labeled, labeled) < MIN_LABELED:
        return None
    before, after = before_correct / before_labeled, correct / labeled
    variance = before * (1 - before) / before_labeled + after * (1 - after) / labeled
    drop = before - after
    return AccuracyDrop(before, after, drop, drop - Z_ONE_SIDED_99 * math.sqrt(variance))
