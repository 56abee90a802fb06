"""Whether a model's accuracy on labeled requests fell, by more than a limit, beyond noise.

Shared by the agent's probation (the new model against the previous one on one device) and
the controller's rollout gate (updated devices against the control group): labels come
back for a small share of requests, and at 100 labels an accuracy of 0.90 reads anywhere
from about 0.84 to 0.96. A drop is therefore judged by its one-sided lower confidence
bound: ``drop - Z * SE``, and it counts as exceeding ``limit`` only when that bound does
(``Z = 2.326``, one-sided 99 %). The standard error is Agresti and Caffo's: each side's
accuracy with one right and one wrong label added, so a side at exactly 0 or 1 (common
with few labels) still has one. Judged once (the agent's probation reads it only from the
end of its window on, a rollout once per wave), a model whose accuracy truly fell by
exactly ``limit`` is failed about one time in a hundred. Below ``MIN_LABELED`` labels on
either side nothing is judged.
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
    smoothed_before = (before_correct + 1) / (before_labeled + 2)
    smoothed_after = (correct + 1) / (labeled + 2)
    variance = smoothed_before * (1 - smoothed_before) / (before_labeled + 2) + smoothed_after * (
        1 - smoothed_after
    ) / (labeled + 2)
    drop = before - after
    return AccuracyDrop(before, after, drop, drop - Z_ONE_SIDED_99 * math.sqrt(variance))
