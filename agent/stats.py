"""Live inference statistics per window and since activation, for telemetry and probation.

The serving layer calls ``InferenceObserver.record`` after every request. ``StatsRecorder``
keeps, for one model version, the current window and the total of the windows it closed;
``roll`` closes the window when it is due, ``cumulative`` is everything since creation.

Invariants:
- ``record`` does O(1) Python work per request: a bisect into fixed latency buckets,
  counters, and a few vectorized numpy calls on the request's arrays (``searchsorted`` and
  ``bincount``, never a Python loop over elements). The numpy work runs outside the lock;
  the lock is held only to add the results, so totals are exact under concurrency.
- Every call to ``record`` counts one request and one latency, error or not.
- A request counts as non-finite when any float output holds a NaN or an infinity.
- Windows are contiguous: a closed window ends where the next one starts.

Latency percentiles (``_percentile_ms``): with ``n`` latencies in buckets, the rank is
``q * n``; the bucket where the cumulative count reaches the rank is interpolated
linearly between its lower and upper bound, and those bounds are first narrowed to the
smallest and largest latency observed (so a constant latency gives itself back and the
overflow bucket above the last bound ends at the maximum). The error is at most one bucket
width: ``LATENCY_BOUNDS_MS`` are 10 per decade, 0.05 ms to 10 s (each 26 % above the last).

Classifiers: an output is taken as class probabilities when the reference profile has a
``class_distribution`` of ``K`` classes and the output is 2-D float of width ``K``; without
that hint, when it is 2-D float, at least 2 wide, finite, in [0, 1] and each row sums to 1
within ``PROBABILITY_SLACK``. The choice is made once, on the first request whose outputs
are all finite. Per row: top-1 confidence is the row's maximum, the class its argmax.

Drift (``population_stability_index``): for each tensor the reference profile has a
histogram of, the finite values of the live tensor, flattened, are counted in the
reference's bins (values outside the edges go to the edge bins, as the converter counted
them). With live fractions ``a_i = c_i / N`` and reference fractions ``e_i`` (normalised
to sum to 1), both floored at ``PSI_EPSILON`` so empty bins stay finite::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

It is reported only from ``MIN_DRIFT_VALUES`` values on: with 10 bins, PSI of a sample
from the reference itself is about ``9 / N`` (chi-square with 9 degrees of freedom over
``N``), so at ``N = 200`` a same-distribution window exceeds 0.25 with probability ~1e-7,
while at 50 values it would about one time in five.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

import protocol

__all__ = [
    "LATENCY_BOUNDS_MS",
    "MIN_DRIFT_VALUES",
    "MIN_WINDOW_S",
    "PROBABILITY_SLACK",
    "PSI_EPSILON",
    "WINDOW_S",
    "InferenceObserver",
    "StatsRecorder",
    "WindowStats",
    "population_stability_index",
    "to_telemetry_window",
]

WINDOW_S = 10.0
# 0.05 ms * 10**(k/10), k = 0..54, rounded to 4 significant digits: 0.05 ms .. 12.56 s.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(
    float(f"{0.05 * 10 ** (k / 10):.4g}") for k in range(55)
)
MIN_DRIFT_VALUES = 200
PSI_EPSILON = 1e-4
PROBABILITY_SLACK = 1e-2
# A window closed at the instant it opened still needs a positive length on the wire.
MIN_WINDOW_S = 1e-3

_Counts = npt.NDArray[np.int64]


class InferenceObserver(Protocol):
    """What the serving layer tells statistics after every request."""

    def record(
        self,
        *,
        latency_s: float,
        inputs: Mapping[str, np.ndarray] | None,
        outputs: Mapping[str, np.ndarray] | None,
        error: bool,
    ) -> None: ...


@dataclass(frozen=True)
class WindowStats:
    """What one model version did over ``window_s`` seconds from ``window_start_s``.

    ``window_start_s`` is monotonic time as the recorder was given it. Percentiles are
    ``None`` without requests; ``top1_confidence_mean`` and ``class_counts`` are ``None``
    unless a classifier output was seen (``classified_rows`` rows of it); ``drift_psi``
    holds only tensors with at least ``MIN_DRIFT_VALUES`` values.
    """

    window_start_s: float
    window_s: float
    requests: int
    errors: int
    nonfinite_outputs: int
    latency_bounds_ms: tuple[float, ...]
    latency_counts: tuple[int, ...]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    classified_rows: int = 0
    top1_confidence_mean: float | None = None
    class_counts: tuple[int, ...] | None = None
    drift_psi: dict[str, float] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def nonfinite_rate(self) -> float:
        return self.nonfinite_outputs / self.requests if self.requests else 0.0


def population_stability_index(
    live_counts: Sequence[int] | _Counts, reference_fractions: Sequence[float]
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
class _DriftBins:
    """One reference histogram, ready for ``searchsorted``."""

    inner_edges: npt.NDArray[np.float64]
    fractions: tuple[float, ...]

    @classmethod
    def of(cls, histogram: protocol.Histogram) -> _DriftBins:
        return cls(
            inner_edges=np.asarray(histogram.bin_edges[1:-1], dtype=np.float64),
            fractions=tuple(histogram.fractions),
        )

    def count(self, array: np.ndarray, *, known_finite: bool) -> _Counts | None:
        values = array.ravel()
        if values.dtype.kind not in "biuf":
            return None  # strings and the like have no place in a numeric histogram
        if not known_finite and values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if values.size == 0:
            return None
        # Bin i holds [edge_i, edge_i+1), the last one also its right edge; values below
        # the first inner edge land in bin 0, values from the last one on in the last bin.
        # (The method, not np.searchsorted: half the call overhead on small arrays.)
        index = self.inner_edges.searchsorted(values, side="right")
        return np.bincount(index, minlength=len(self.fractions))


@dataclass(frozen=True)
class _Classifier:
    name: str
    width: int


class _Classified(NamedTuple):
    """One request's classifier rows: their count, summed top-1, and classes."""

    rows: int
    confidence_sum: float
    classes: _Counts | int  # the class of a single row, else counts per class
    width: int


class _Accumulator:
    """Mutable sums of one span of time; only touched with the recorder's lock held."""

    def __init__(self, start_s: float) -> None:
        self.start_s = start_s
        self.requests = 0
        self.errors = 0
        self.nonfinite = 0
        self.latency_counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        self.latency_min_ms = math.inf
        self.latency_max_ms = -math.inf
        self.classified_rows = 0
        self.confidence_sum = 0.0
        self.class_counts: _Counts | None = None
        self.drift: dict[str, _Counts] = {}

    def add_classified(self, classified: _Classified) -> None:
        self.classified_rows += classified.rows
        self.confidence_sum += classified.confidence_sum
        if isinstance(classified.classes, int):
            if self.class_counts is None:
                self.class_counts = np.zeros(classified.width, dtype=np.int64)
            if self.class_counts.shape == (classified.width,):
                self.class_counts[classified.classes] += 1
        else:
            self.class_counts = _add_counts(self.class_counts, classified.classes)

    def add(self, other: _Accumulator) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.nonfinite += other.nonfinite
        self.latency_counts = [
            a + b for a, b in zip(self.latency_counts, other.latency_counts, strict=True)
        ]
        self.latency_min_ms = min(self.latency_min_ms, other.latency_min_ms)
        self.latency_max_ms = max(self.latency_max_ms, other.latency_max_ms)
        self.classified_rows += other.classified_rows
        self.confidence_sum += other.confidence_sum
        if other.class_counts is not None:
            self.class_counts = _add_counts(self.class_counts, other.class_counts)
        for name, counts in other.drift.items():
            self.drift[name] = _add_counts(self.drift.get(name), counts)

    def snapshot(self, *, end_s: float, drift_bins: Mapping[str, _DriftBins]) -> WindowStats:
        psi = {
            name: population_stability_index(counts, drift_bins[name].fractions)
            for name, counts in sorted(self.drift.items())
            if int(counts.sum()) >= MIN_DRIFT_VALUES
        }
        classified = self.class_counts is not None and self.classified_rows > 0
        return WindowStats(
            window_start_s=self.start_s,
            window_s=max(end_s - self.start_s, 0.0),
            requests=self.requests,
            errors=self.errors,
            nonfinite_outputs=self.nonfinite,
            latency_bounds_ms=LATENCY_BOUNDS_MS,
            latency_counts=tuple(self.latency_counts),
            p50_ms=self._percentile_ms(0.50),
            p95_ms=self._percentile_ms(0.95),
            p99_ms=self._percentile_ms(0.99),
            classified_rows=self.classified_rows,
            top1_confidence_mean=(
                self.confidence_sum / self.classified_rows if classified else None
            ),
            class_counts=(
                tuple(int(c) for c in self.class_counts)
                if classified and self.class_counts is not None
                else None
            ),
            drift_psi=psi,
        )

    def _percentile_ms(self, q: float) -> float | None:
        total = sum(self.latency_counts)
        if total == 0:
            return None
        rank = q * total
        below = 0
        for index, count in enumerate(self.latency_counts):
            if count and below + count >= rank:
                lower = LATENCY_BOUNDS_MS[index - 1] if index else 0.0
                upper = LATENCY_BOUNDS_MS[index] if index < len(LATENCY_BOUNDS_MS) else math.inf
                lower = max(lower, self.latency_min_ms)
                upper = min(upper, self.latency_max_ms)
                return lower + (upper - lower) * max(rank - below, 0.0) / count
            below += count
        return self.latency_max_ms  # pragma: no cover - the loop always reaches the rank


def _add_counts(total: _Counts | None, counts: _Counts) -> _Counts:
    if total is None:
        return counts.astype(np.int64)  # a copy, and 64-bit where intp is 32
    if total.shape == counts.shape:  # else a classifier whose width changed: keep the first
        total += counts  # in place: every total was copied from its first counts
    return total


class StatsRecorder:
    """Statistics of one model version: the current window and the total since creation.

    Thread-safe: any number of serving threads may call ``record`` while one caller rolls
    windows. Time is given in monotonic seconds; nothing here reads a clock.
    """

    def __init__(
        self,
        *,
        reference: protocol.ReferenceProfile | None,
        window_s: float = WINDOW_S,
        now_s: float,
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = window_s
        self._created_s = now_s
        self._last_s = now_s
        self._lock = threading.Lock()
        self._input_bins = _drift_bins_of(reference.inputs if reference else {})
        self._output_bins = _drift_bins_of(reference.outputs if reference else {})
        # One PSI per name; an output shadows an input of the same name.
        self._drift_bins = {**self._input_bins, **self._output_bins}
        self._classes_hint = (
            len(reference.class_distribution)
            if reference is not None and reference.class_distribution
            else None
        )
        self._classifier: _Classifier | None = None
        self._classifier_decided = False
        self._total = _Accumulator(now_s)
        self._current = _Accumulator(now_s)

    @property
    def classifier_output(self) -> str | None:
        """The output taken as class probabilities, once decided."""
        classifier = self._classifier
        return None if classifier is None else classifier.name

    def record(
        self,
        *,
        latency_s: float,
        inputs: Mapping[str, np.ndarray] | None,
        outputs: Mapping[str, np.ndarray] | None,
        error: bool,
    ) -> None:
        latency_ms = latency_s * 1000.0
        if not latency_ms >= 0:  # also NaN: a broken timer must not poison the histogram
            latency_ms = 0.0
        bucket = bisect_left(LATENCY_BOUNDS_MS, latency_ms)
        drift: list[tuple[str, _Counts]] = []
        nonfinite, classified = self._measure_outputs(outputs, drift) if outputs else (False, None)
        if inputs:
            for name, bins in self._input_bins.items():
                if name not in self._output_bins and (array := inputs.get(name)) is not None:
                    counts = bins.count(array, known_finite=False)
                    if counts is not None:
                        drift.append((name, counts))
        with self._lock:
            acc = self._current
            acc.requests += 1
            acc.errors += error
            acc.nonfinite += nonfinite
            acc.latency_counts[bucket] += 1
            if latency_ms < acc.latency_min_ms:
                acc.latency_min_ms = latency_ms
            if latency_ms > acc.latency_max_ms:
                acc.latency_max_ms = latency_ms
            if classified is not None:
                acc.add_classified(classified)
            for name, counts in drift:
                acc.drift[name] = _add_counts(acc.drift.get(name), counts)

    def roll(self, now_s: float, *, force: bool = False) -> WindowStats | None:
        """Close the current window if ``window_s`` has passed (or ``force``) and return it.

        The next window starts at ``now_s``. ``None`` when the window is not due yet.
        """
        with self._lock:
            current = self._current
            if not force and now_s - current.start_s < self.window_s:
                return None
            end_s = max(now_s, current.start_s)
            self._total.add(current)
            self._current = _Accumulator(end_s)
            self._last_s = max(self._last_s, end_s)
        return current.snapshot(end_s=end_s, drift_bins=self._drift_bins)

    def cumulative(self, now_s: float | None = None) -> WindowStats:
        """Everything since creation: the closed windows plus the current one.

        Its ``window_s`` runs to ``now_s`` when given, else to the last roll.
        """
        with self._lock:
            total = _Accumulator(self._created_s)
            total.add(self._total)
            total.add(self._current)
            end_s = self._last_s if now_s is None else max(now_s, self._last_s)
        return total.snapshot(end_s=end_s, drift_bins=self._drift_bins)

    def _measure_outputs(
        self, outputs: Mapping[str, np.ndarray], drift: list[tuple[str, _Counts]]
    ) -> tuple[bool, _Classified | None]:
        """Whether any output is non-finite, and the classifier's rows; adds drift counts."""
        finite = {name for name, array in outputs.items() if _all_finite(array)}
        nonfinite = len(finite) < len(outputs)
        if not self._classifier_decided and not nonfinite:
            self._decide_classifier(outputs)
        classified = None
        classifier = self._classifier
        if classifier is not None and (scores := outputs.get(classifier.name)) is not None:
            classified = _classify(scores, classifier.width, finite=classifier.name in finite)
        for name, bins in self._output_bins.items():
            if (tensor := outputs.get(name)) is not None:
                counts = bins.count(tensor, known_finite=name in finite)
                if counts is not None:
                    drift.append((name, counts))
        return nonfinite, classified

    def _decide_classifier(self, outputs: Mapping[str, np.ndarray]) -> None:
        decided, chosen = _find_classifier(outputs, self._classes_hint)
        if decided:
            with self._lock:
                if not self._classifier_decided:
                    self._classifier = chosen
                    self._classifier_decided = True


def _drift_bins_of(histograms: Mapping[str, protocol.Histogram]) -> dict[str, _DriftBins]:
    # A histogram without mass (all fractions 0) is schema-valid but has no PSI.
    return {
        name: _DriftBins.of(histogram)
        for name, histogram in histograms.items()
        if math.fsum(histogram.fractions) > 0
    }


def _find_classifier(
    outputs: Mapping[str, np.ndarray], classes_hint: int | None
) -> tuple[bool, _Classifier | None]:
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
                return True, _Classifier(name, classes_hint)
    for name, array in candidates:
        if array.shape[1] < 2:
            continue
        values = array.astype(np.float64, copy=False)
        in_range = values.min() >= -PROBABILITY_SLACK and values.max() <= 1 + PROBABILITY_SLACK
        if in_range and np.allclose(values.sum(axis=1), 1.0, rtol=0, atol=PROBABILITY_SLACK):
            return True, _Classifier(name, int(array.shape[1]))
    return True, None


def _classify(probabilities: np.ndarray, width: int, *, finite: bool) -> _Classified | None:
    if probabilities.ndim != 2 or probabilities.shape[1] != width:
        return None
    if not finite:
        # Only rows that are entirely finite have a meaningful maximum and argmax.
        probabilities = probabilities[np.isfinite(probabilities).all(axis=1)]
    rows = probabilities.shape[0]
    if rows == 1:  # the common case, without allocating counts
        top = int(probabilities[0].argmax())
        return _Classified(1, float(probabilities[0, top]), top, width)
    if rows == 0:
        return None
    tops = probabilities.argmax(axis=1)
    confidence = float(probabilities[np.arange(rows), tops].sum())
    return _Classified(rows, confidence, np.bincount(tops, minlength=width), width)


def _all_finite(array: np.ndarray) -> bool:
    # Not via the sum (one call fewer): inf - inf and overflow would raise numpy warnings.
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())


def to_telemetry_window(
    stats: WindowStats,
    *,
    model: str,
    release: protocol.ReleaseRef | None,
    window_start: datetime,
) -> protocol.TelemetryWindow:
    """The window as the protocol reports it; ``window_start`` is its wall-clock start.

    Kept within the schema: the confidence is clipped to [0, 1] (a width-matched output
    that is not quite a probability) and a zero-length window gets ``MIN_WINDOW_S``.
    """
    latency = None
    if stats.p50_ms is not None and stats.p95_ms is not None and stats.p99_ms is not None:
        latency = protocol.LatencySummary(
            p50_ms=stats.p50_ms,
            p95_ms=stats.p95_ms,
            p99_ms=stats.p99_ms,
            bounds_ms=list(stats.latency_bounds_ms),
            counts=list(stats.latency_counts),
        )
    confidence = stats.top1_confidence_mean
    return protocol.TelemetryWindow(
        model=model,
        release=release,
        window_start=window_start,
        window_s=max(stats.window_s, MIN_WINDOW_S),
        requests=stats.requests,
        errors=min(stats.errors, stats.requests),
        nonfinite_outputs=stats.nonfinite_outputs,
        latency=latency,
        top1_confidence_mean=None if confidence is None else min(max(confidence, 0.0), 1.0),
        class_counts=None if stats.class_counts is None else list(stats.class_counts),
        drift_psi={name: psi for name, psi in stats.drift_psi.items() if math.isfinite(psi)},
    )
