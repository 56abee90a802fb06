"""Live inference statistics per window and since activation, for telemetry and probation.

The serving layer calls ``InferenceObserver.record`` after every request. ``StatsRecorder``
keeps, for one model version, the current window and the total of the windows it closed;
``roll`` closes the window when it is due, ``cumulative`` is everything since creation.

Invariants:
- ``record`` does O(1) Python work per request and no numpy call: it adds up the byte
  sizes of the outputs and appends the request (latency, error flag, the outputs by
  reference and, only when drift on inputs is configured, copies of those inputs) to a
  pending queue (a ``deque``: appends from many threads need no lock). The outputs are the
  runtime's fresh arrays, so holding them costs no copy (whoever modifies them in place
  before they are measured changes the figures); inputs are the caller's to reuse.
- Pending requests are measured in batches, with one vectorized numpy pass per tensor
  name over its arrays stacked along axis 0: by the request that brings the queue to
  ``PENDING_REQUESTS``, at once for a request whose arrays exceed
  ``MAX_PENDING_REQUEST_BYTES`` (so a huge batch is never kept), and by every ``roll``,
  ``cumulative`` and ``classifier_output`` before they read. So pending arrays take at
  most ``PENDING_REQUESTS * MAX_PENDING_REQUEST_BYTES`` (4 MiB), twice that while one
  batch is being measured and the next fills (plus a request per serving thread).
- Measuring, rolling and reading hold one lock, so every request recorded before a
  ``roll`` or ``cumulative`` is in its figures, each request counts in exactly one
  window, and totals are exact under concurrency.
- Batches give the figures one request at a time would: every call to ``record`` counts
  one request and one latency, error or not; a request counts as non-finite when any
  float output of *that request* holds a NaN or an infinity; class counts, classified
  rows and drift counts are the same integers; the confidence sum differs by rounding.
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
within ``PROBABILITY_SLACK``. The choice is made once, on the first request (in recording
order) whose outputs are all finite; requests before it are not classified. Per row: top-1
confidence is the row's maximum, the class its argmax; rows with a NaN or an infinity are
left out.

Drift (``population_stability_index``): for each tensor the reference profile has a
histogram of, the finite values of the live tensor, flattened, are counted in the
reference's bins (values outside the edges go to the edge bins, as the converter counted
them). With live fractions ``a_i = c_i / N`` and reference fractions ``e_i`` (normalised
to sum to 1), both floored at ``PSI_EPSILON`` so empty bins stay finite::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

It is reported only from ``MIN_DRIFT_VALUES`` values on: with 10 bins, PSI of a sample
from the reference itself is about ``9 / N`` (chi-square with 9 degrees of freedom over
``N``), so at ``N = 200`` a same-distribution window exceeds 0.25 with probability ~1e-7,
while at 50 values it would about one time in five. That holds for independent values;
the values of one request are not (the features of one row, the pixels of one image),
so a PSI is reported early and probation judges it only from
``agent.stats.probation.MIN_DRIFT_REQUESTS`` requests on.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

import protocol

__all__ = [
    "LATENCY_BOUNDS_MS",
    "MAX_PENDING_REQUEST_BYTES",
    "MIN_DRIFT_VALUES",
    "MIN_WINDOW_S",
    "PENDING_REQUESTS",
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
# Enough requests per batch that numpy's fixed cost per call is spread thin.
PENDING_REQUESTS = 256
MAX_PENDING_REQUEST_BYTES = 16 * 1024

_Counts = npt.NDArray[np.int64]
_BOUNDS_MS = np.asarray(LATENCY_BOUNDS_MS, dtype=np.float64)
_Arrays = Mapping[str, np.ndarray]
# A request waiting to be measured: latency (s), error, outputs, copies of drift inputs.
_Pending = tuple[float, bool, _Arrays | None, dict[str, np.ndarray] | None]


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

    def count(self, values: np.ndarray) -> _Counts | None:
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


@dataclass(frozen=True)
class _Classifier:
    name: str
    width: int


class _Accumulator:
    """Mutable sums of one span of time; only touched with the recorder's lock held."""

    def __init__(self, start_s: float) -> None:
        self.start_s = start_s
        self.requests = 0
        self.errors = 0
        self.nonfinite = 0
        self.latency_counts: _Counts = np.zeros(len(LATENCY_BOUNDS_MS) + 1, dtype=np.int64)
        self.latency_min_ms = math.inf
        self.latency_max_ms = -math.inf
        self.classified_rows = 0
        self.confidence_sum = 0.0
        self.class_counts: _Counts | None = None
        self.drift: dict[str, _Counts] = {}

    def add_latencies(self, latencies_ms: npt.NDArray[np.float64]) -> None:
        buckets = _BOUNDS_MS.searchsorted(latencies_ms, side="left")
        self.latency_counts += np.bincount(buckets, minlength=self.latency_counts.size)
        self.latency_min_ms = min(self.latency_min_ms, float(latencies_ms.min()))
        self.latency_max_ms = max(self.latency_max_ms, float(latencies_ms.max()))

    def add(self, other: _Accumulator) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.nonfinite += other.nonfinite
        self.latency_counts += other.latency_counts
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
        latency_counts: list[int] = self.latency_counts.tolist()
        return WindowStats(
            window_start_s=self.start_s,
            window_s=max(end_s - self.start_s, 0.0),
            requests=self.requests,
            errors=self.errors,
            nonfinite_outputs=self.nonfinite,
            latency_bounds_ms=LATENCY_BOUNDS_MS,
            latency_counts=tuple(latency_counts),
            p50_ms=self._percentile_ms(latency_counts, 0.50),
            p95_ms=self._percentile_ms(latency_counts, 0.95),
            p99_ms=self._percentile_ms(latency_counts, 0.99),
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

    def _percentile_ms(self, latency_counts: list[int], q: float) -> float | None:
        total = sum(latency_counts)
        if total == 0:
            return None
        rank = q * total
        below = 0
        for index, count in enumerate(latency_counts):
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
    if total.shape == counts.shape:
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
        self._pending: deque[_Pending] = deque()
        input_bins = _drift_bins_of(reference.inputs if reference else {})
        self._output_bins = _drift_bins_of(reference.outputs if reference else {})
        # One PSI per name; an output shadows an input of the same name.
        self._input_bins = {
            name: bins for name, bins in input_bins.items() if name not in self._output_bins
        }
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
        with self._lock:
            self._measure_pending()
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
        """Count one request; its arrays are measured later, in a batch (see the module doc)."""
        size_bytes = 0
        if outputs:
            for array in outputs.values():
                size_bytes += array.nbytes
        copies = None
        if inputs and self._input_bins:
            copies = {}
            for name in self._input_bins:
                if (given := inputs.get(name)) is not None:
                    copies[name] = copy = np.array(given, copy=True)
                    size_bytes += copy.nbytes
        pending = self._pending
        pending.append((latency_s, error, outputs, copies))
        if len(pending) >= PENDING_REQUESTS or size_bytes > MAX_PENDING_REQUEST_BYTES:
            with self._lock:
                self._measure_pending()

    def roll(self, now_s: float, *, force: bool = False) -> WindowStats | None:
        """Close the current window if ``window_s`` has passed (or ``force``) and return it.

        The next window starts at ``now_s``. ``None`` when the window is not due yet.
        """
        with self._lock:
            self._measure_pending()
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
            self._measure_pending()
            total = _Accumulator(self._created_s)
            total.add(self._total)
            total.add(self._current)
            end_s = self._last_s if now_s is None else max(now_s, self._last_s)
        return total.snapshot(end_s=end_s, drift_bins=self._drift_bins)

    def _measure_pending(self) -> None:
        """Measure every pending request into the current window; the lock is held."""
        pending = self._pending
        count = len(pending)  # requests appended meanwhile wait for the next batch
        if count:
            self._measure([pending.popleft() for _ in range(count)])

    def _measure(self, batch: list[_Pending]) -> None:
        acc = self._current
        latencies_s, errors, outputs, inputs = zip(*batch, strict=True)
        latencies_ms = np.array(latencies_s, dtype=np.float64) * 1000.0
        # Also NaN: a broken timer must not poison the histogram.
        latencies_ms[~(latencies_ms >= 0)] = 0.0
        acc.requests += len(batch)
        acc.errors += sum(map(bool, errors))
        acc.add_latencies(latencies_ms)

        columns = _columns(outputs)
        nonfinite: set[int] = set()
        for tensor in columns.values():
            nonfinite |= tensor.nonfinite_owners()
        acc.nonfinite += len(nonfinite)

        first = 0 if self._classifier_decided else self._decide_classifier(outputs, nonfinite)
        classifier = self._classifier
        if classifier is not None and (scores := columns.get(classifier.name)) is not None:
            classified = scores.classified(first, classifier.width)
            if classified is not None:
                rows, confidence_sum, class_counts = classified
                acc.classified_rows += rows
                acc.confidence_sum += confidence_sum
                acc.class_counts = _add_counts(acc.class_counts, class_counts)

        for name, bins in self._output_bins.items():
            if (output := columns.get(name)) is not None:
                self._add_drift(acc, name, bins, output)
        if self._input_bins:
            input_columns = _columns(inputs)
            for name, bins in self._input_bins.items():
                if (given := input_columns.get(name)) is not None:
                    self._add_drift(acc, name, bins, given)

    @staticmethod
    def _add_drift(acc: _Accumulator, name: str, bins: _DriftBins, column: _Column) -> None:
        values = column.values()
        counts = None if values is None else bins.count(values)
        if counts is not None:
            acc.drift[name] = _add_counts(acc.drift.get(name), counts)

    def _decide_classifier(self, outputs: Sequence[_Arrays | None], nonfinite: set[int]) -> int:
        """Decide on the first finite request of the batch; the index classifying starts at."""
        for index, mapping in enumerate(outputs):
            if mapping and index not in nonfinite:
                decided, chosen = _find_classifier(mapping, self._classes_hint)
                if decided:
                    self._classifier, self._classifier_decided = chosen, True
                    return index
        return len(outputs)


def _drift_bins_of(histograms: Mapping[str, protocol.Histogram]) -> dict[str, _DriftBins]:
    # A histogram without mass (all fractions 0) is schema-valid but has no PSI.
    return {
        name: _DriftBins.of(histogram)
        for name, histogram in histograms.items()
        if math.fsum(histogram.fractions) > 0
    }


def _columns(mappings: Sequence[_Arrays | None]) -> dict[str, _Column]:
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
            return {name: _Column(owners, [m[name] for m in present]) for name in names}
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
    return {name: _Column(*column) for name, column in by_name.items()}


class _Column:
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
            return _classify(stacked, width)
        fitting = [
            array
            for array in self.arrays[skip:]
            if array.ndim == 2 and array.shape[1] == width and array.dtype.kind in "biuf"
        ]
        if not fitting:
            return None
        return _classify(np.concatenate(fitting, axis=0), width)

    def values(self) -> np.ndarray | None:
        """Every number of the column, flattened (strings and the like left out)."""
        stacked = self.stacked
        if stacked is not None and stacked.dtype.kind in "biuf":
            return stacked.ravel()
        numeric = [array for array in self.arrays if array.dtype.kind in "biuf"]
        return np.concatenate(numeric, axis=None) if numeric else None


def _find_classifier(outputs: _Arrays, classes_hint: int | None) -> tuple[bool, _Classifier | None]:
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


def _stack(arrays: list[np.ndarray], dtypes: set[np.dtype[Any]]) -> np.ndarray | None:
    if not all(dtype.kind in "biufc" for dtype in dtypes):
        return None
    if len(arrays) == 1:
        return arrays[0]
    try:
        return np.concatenate(arrays, axis=0)
    except ValueError:  # 0-d arrays or different trailing shapes
        return None


def _classify(scores: np.ndarray, width: int) -> tuple[int, float, _Counts] | None:
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
