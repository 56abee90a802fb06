"""The profile rules: histogram bins, which output holds class probabilities, and drift.

Converters apply them to the validation set to write a release's reference profile; the
agent applies them to live requests to compare with it. Both sides use this module, so a
device counts exactly as the reference was counted. Pure: numpy only.

Histograms (``histogram``): ``HISTOGRAM_BINS`` equal-width bins from the smallest to the
largest finite value, one unit wide around a constant; NaN and infinities are left out.
Bin i holds [edge_i, edge_i+1), the last one also its right edge.

Counting live values into a reference's bins (``ReferenceBins.count``): the finite values,
flattened; values below the first edge go to the first bin and values above the last edge
to the last, as ``histogram`` clips them.

Class probabilities (``are_class_probabilities``): a 2-D float array, at least 2 wide
and 1 tall, finite, within [0, 1] and with every row summing to 1, all up to
``PROBABILITY_SLACK``.

Features and channels (``feature_axis``, ``feature_key``): an input is profiled as a
whole and, when it has at most ``MAX_FEATURE_HISTOGRAMS`` of them, per feature (the
columns of a 2-D input) or per channel (an image, 4-D, whose axis 1 or else axis 3 holds
1 to 4 channels), under the key ``name[i]``: drift in one feature or colour is not
diluted by the rest. Images are counted on a strided grid of at most
``MAX_DRIFT_PIXELS`` pixels per channel (``drift_sample``), so the cost per request is
bounded whatever the resolution.

Drift (``population_stability_index``): with live fractions ``a_i = c_i / N`` and
reference fractions ``e_i`` (normalised to sum to 1), both floored at ``PSI_EPSILON`` so
empty bins stay finite::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "HISTOGRAM_BINS",
    "MAX_DRIFT_PIXELS",
    "MAX_FEATURE_HISTOGRAMS",
    "MIN_DRIFT_REQUESTS",
    "MIN_DRIFT_VALUES",
    "PROBABILITY_SLACK",
    "PSI_EPSILON",
    "ReferenceBins",
    "are_class_probabilities",
    "drift_sample",
    "feature_axis",
    "feature_histograms",
    "feature_key",
    "histogram",
    "population_stability_index",
    "split_feature_key",
]

Counts = npt.NDArray[np.int64]

HISTOGRAM_BINS = 10
PSI_EPSILON = 1e-4
# Requests a model must have served before a drift figure (PSI) is judged, on the device
# and by the controller alike. The values of one request are not independent samples (the
# features of one row, the pixels of one image): PSI over a few dozen requests is noise (a
# good first model was once rolled back at PSI 0.30 over about 50 requests).
MIN_DRIFT_REQUESTS = 200
# Values a PSI is read from at least (agent.stats.recorder explains the 9/N bias below it).
MIN_DRIFT_VALUES = 200
# FP16 has a 1e-3 epsilon: a softmax computed in FP16 (an FP16 variant, or a device that
# computes FP16 natively) gives rows that sum to 1 only within about 1e-2. A tighter
# slack would make the same model a classifier in FP32 and not in FP16.
PROBABILITY_SLACK = 1e-2
# Per-feature histograms only up to this many features: each is a PSI and ten counts in
# every telemetry window of every device.
MAX_FEATURE_HISTOGRAMS = 16
MAX_IMAGE_CHANNELS = 4
MAX_DRIFT_PIXELS = 1024
_FEATURE_KEY = re.compile(r"^(?P<name>.+)\[(?P<index>\d{1,3})\]$")


def feature_axis(shape: Sequence[int]) -> int | None:
    """The axis of features (2-D: the columns) or channels (4-D: axis 1 if it holds 1 to
    ``MAX_IMAGE_CHANNELS``, else axis 3 if that does); None for any other shape."""
    if len(shape) == 2:
        return 1
    if len(shape) == 4:
        if 1 <= shape[1] <= MAX_IMAGE_CHANNELS:
            return 1
        if 1 <= shape[3] <= MAX_IMAGE_CHANNELS:
            return 3
    return None


def feature_key(name: str, index: int) -> str:
    return f"{name}[{index}]"


def split_feature_key(key: str) -> tuple[str, int] | None:
    """(input name, feature index) of a ``feature_key``; None for a whole tensor's key."""
    match = _FEATURE_KEY.match(key)
    return None if match is None else (match["name"], int(match["index"]))


def drift_sample(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The values drift is counted on: an image's pixels on a strided grid of at most
    ``MAX_DRIFT_PIXELS`` per channel (a view), anything else whole."""
    axis = feature_axis(array.shape)
    if array.ndim != 4 or axis is None:
        return array
    spatial = (2, 3) if axis == 1 else (1, 2)
    pixels = array.shape[spatial[0]] * array.shape[spatial[1]]
    stride = max(1, math.ceil(math.sqrt(pixels / MAX_DRIFT_PIXELS)))
    if stride == 1:
        return array
    if axis == 1:
        return array[:, :, ::stride, ::stride]
    return array[:, ::stride, ::stride, :]


def feature_histograms(name: str, array: npt.NDArray[Any]) -> dict[str, dict[str, list[float]]]:
    """Histograms of each feature or channel of ``array``, by ``feature_key``; none when it
    has no feature axis or more than ``MAX_FEATURE_HISTOGRAMS`` features."""
    axis = feature_axis(array.shape)
    if axis is None or not 1 < array.shape[axis] <= MAX_FEATURE_HISTOGRAMS:
        return {}
    sample = drift_sample(array)
    histograms = {}
    for index in range(array.shape[axis]):
        if (hist := histogram(np.take(sample, index, axis=axis))) is not None:
            histograms[feature_key(name, index)] = hist
    return histograms


def histogram(values: npt.ArrayLike) -> dict[str, list[float]] | None:
    """Equal-width bins over the finite values; ``None`` when there is none."""
    finite = np.asarray(values, dtype=np.float64).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    low, high = float(finite.min()), float(finite.max())
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    if not np.all(np.diff(edges) > 0):
        # A constant (or nearly constant) tensor: bins one unit wide around it.
        edges = np.linspace(low - 0.5, low + 0.5, HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(np.clip(finite, edges[0], edges[-1]), bins=edges)
    return {
        "bin_edges": [float(edge) for edge in edges],
        "fractions": [float(count) / finite.size for count in counts],
    }


def are_class_probabilities(scores: npt.NDArray[Any]) -> bool:
    """Whether ``scores`` look like one probability row per sample (see the module doc)."""
    if scores.ndim != 2 or scores.shape[1] < 2 or scores.shape[0] == 0:
        return False
    if scores.dtype.kind != "f":
        return False
    values = scores.astype(np.float64, copy=False)
    if not np.all(np.isfinite(values)):
        return False
    in_range = values.min() >= -PROBABILITY_SLACK and values.max() <= 1 + PROBABILITY_SLACK
    return bool(in_range and np.allclose(values.sum(axis=1), 1.0, rtol=0, atol=PROBABILITY_SLACK))


def population_stability_index(
    live_counts: Sequence[int] | Counts, reference_fractions: Sequence[float]
) -> float:
    """PSI of live bin counts against reference fractions (formula in the module doc)."""
    live = np.asarray(live_counts, dtype=np.float64)
    expected = np.asarray(reference_fractions, dtype=np.float64)
    if live.shape != expected.shape:
        raise ValueError(f"{live.size} live bins against {expected.size} reference bins")
    live_total, expected_total = float(live.sum()), float(expected.sum())
    if live_total <= 0 or expected_total <= 0:
        raise ValueError("PSI needs values on both sides")
    a = np.maximum(live / live_total, PSI_EPSILON)
    e = np.maximum(expected / expected_total, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class ReferenceBins:
    """One reference histogram, ready for ``searchsorted``."""

    inner_edges: npt.NDArray[np.float64]
    fractions: tuple[float, ...]

    @classmethod
    def of(cls, bin_edges: Sequence[float], fractions: Sequence[float]) -> ReferenceBins:
        return cls(
            inner_edges=np.asarray(bin_edges[1:-1], dtype=np.float64),
            fractions=tuple(fractions),
        )

    def count(self, values: npt.NDArray[Any]) -> Counts | None:
        """Bin counts of the finite ones of ``values`` (numbers, flattened)."""
        if values.dtype.kind == "f":
            finite = np.isfinite(values)
            if not finite.all():
                values = values[finite]
        if values.size == 0:
            return None
        # Bin i holds [edge_i, edge_i+1), the last one also its right edge; values below
        # the first inner edge land in bin 0, values from the last one on in the last bin.
        index = self.inner_edges.searchsorted(values, side="right")
        return np.bincount(index, minlength=len(self.fractions))
