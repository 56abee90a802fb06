"""Live inference statistics per window and since activation, for telemetry and probation.

The serving layer calls ``InferenceObserver.record`` after every request. ``StatsRecorder``
keeps, for one model version, the current window and the total of the windows it closed;
``roll`` closes the window when it is due, ``cumulative`` is everything since creation.

Invariants:
- ``record`` does O(1) Python work per request and no numpy call: it adds up the byte
  sizes of the outputs and appends the request (latency, error flag, the outputs by
  reference and, only when drift on inputs is configured, copies of those inputs) to a
  pending queue (a list: appends from many threads need no lock). The outputs are the
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
- Sample capture (``agent.stats.capture``) costs one attribute read per request while
  it is off (``capture`` None); while it is on, one budget check, and with budget left
  one numpy pass over the request's scores; inputs are copied only for a request kept.

Figures come from the modules that own their rules: latency buckets and percentiles
from ``agent.stats.latency``; which output holds class probabilities, and per-row
confidence and class, from ``agent.stats.classes``; histogram bins, how live values are
counted into a reference's bins, and PSI from ``tensors.profile``, the rules the converter
used to write the reference profile.

The classifier is chosen once, on the first request (in recording order) whose outputs
are all finite; requests before it are not classified.

Drift: for each tensor the reference profile has a histogram of, the finite values of the
live tensor, flattened, are counted in the reference's bins (``tensors.profile``), and a
PSI against the reference's fractions is computed when a window is read. Only a profile of
the version's validation data counts (``source == "validation"``): one profiled from
seeded synthetic inputs describes noise, and drift against it is not measured at all.
The bins are immutable and built once per profile object: the recorders of one profile
(the serving host keeps one parsed profile per check bundle, so all the agents of a
process that hold one release) share them.
``drift_psi`` holds inputs and outputs; ``output_drift_psi`` the outputs alone, the only
drift that says something about the model rather than the data it is given.

A PSI is reported only from ``MIN_DRIFT_VALUES`` values on: with 10 bins, PSI of a sample
from the reference itself is about ``9 / N`` (chi-square with 9 degrees of freedom over
``N``), so at ``N = 200`` a same-distribution window exceeds 0.25 with probability ~1e-7,
while at 50 values it would about one time in five. That holds for independent values;
the values of one request are not (the features of one row, the pixels of one image),
so a PSI is reported early and judged only from ``tensors.MIN_DRIFT_REQUESTS`` requests
on.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

import protocol
from tensors import ReferenceBins, population_stability_index
from tensors.profile import MIN_DRIFT_VALUES, drift_sample, split_feature_key

from .capture import ModelCapture, rare_input_share, request_confidence
from .classes import Classifier, find_classifier
from .columns import Arrays, Column, columns_of
from .latency import LATENCY_BOUNDS_MS, latency_bucket_counts, percentile_ms

__all__ = [
    "FEEDBACK_MAX_BYTES",
    "FEEDBACK_MEMORY",
    "MAX_PENDING_REQUEST_BYTES",
    "MIN_DRIFT_VALUES",
    "PENDING_REQUESTS",
    "WINDOW_S",
    "Feedback",
    "InferenceObserver",
    "StatsRecorder",
    "WindowStats",
]

WINDOW_S = 10.0
# Enough requests per batch that numpy's fixed cost per call is spread thin.
PENDING_REQUESTS = 256
MAX_PENDING_REQUEST_BYTES = 16 * 1024

logger = logging.getLogger(__name__)

_Counts = npt.NDArray[np.int64]
# A request waiting to be measured: latency (s), error, outputs, copies of drift inputs.
_Pending = tuple[float, bool, Arrays | None, dict[str, np.ndarray] | None]


# Requests whose outputs wait for their ground truth (``StatsRecorder.remember``).
FEEDBACK_MEMORY = 1024
FEEDBACK_MAX_BYTES = 16 * 1024


class Feedback(enum.Enum):
    COUNTED = "counted"
    UNKNOWN_REQUEST = "unknown_request"  # never seen, already labeled, or forgotten
    NOT_ONE_CLASSIFIED_ROW = "not_one_classified_row"  # no class to compare a label with


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
    output_drift_psi: dict[str, float] = field(default_factory=dict)
    # Live values per reference bin, every tensor with a reference histogram, whatever
    # the count: what the controller pools across windows and devices.
    drift_counts: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # Requests whose true class the application sent back, and how many the model got
    # right (``StatsRecorder.feedback``).
    labeled: int = 0
    labeled_correct: int = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def nonfinite_rate(self) -> float:
        return self.nonfinite_outputs / self.requests if self.requests else 0.0


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
        # Ground truth the application sent back (``StatsRecorder.feedback``).
        self.labeled = 0
        self.labeled_correct = 0

    def add_latencies(self, latencies_ms: npt.NDArray[np.float64]) -> None:
        self.latency_counts += latency_bucket_counts(latencies_ms)
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
        self.labeled += other.labeled
        self.labeled_correct += other.labeled_correct
        if other.class_counts is not None:
            self.class_counts = _add_counts(self.class_counts, other.class_counts)
        for name, counts in other.drift.items():
            self.drift[name] = _add_counts(self.drift.get(name), counts)

    def snapshot(
        self,
        *,
        end_s: float,
        drift_bins: Mapping[str, ReferenceBins],
        output_names: frozenset[str] = frozenset(),
    ) -> WindowStats:
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
            labeled=self.labeled,
            labeled_correct=self.labeled_correct,
            top1_confidence_mean=(
                self.confidence_sum / self.classified_rows if classified else None
            ),
            class_counts=(
                tuple(int(c) for c in self.class_counts)
                if classified and self.class_counts is not None
                else None
            ),
            drift_psi=psi,
            output_drift_psi={name: v for name, v in psi.items() if name in output_names},
            drift_counts={
                name: tuple(int(count) for count in counts)
                for name, counts in sorted(self.drift.items())
            },
        )

    def _percentile_ms(self, latency_counts: list[int], q: float) -> float | None:
        return percentile_ms(
            latency_counts, q, min_ms=self.latency_min_ms, max_ms=self.latency_max_ms
        )


def _add_counts(total: _Counts | None, counts: _Counts) -> _Counts:
    if total is None:
        return counts.astype(np.int64)  # a copy, and 64-bit where intp is 32
    if total.shape == counts.shape:
        total += counts  # in place: every total was copied from its first counts
    return total


@dataclass(frozen=True)
class _DriftPlan:
    """What a reference profile makes a recorder measure: drift bins by name, and the
    classifier hint. Immutable, so every recorder of the same profile object (the
    serving host keeps one parsed profile per check bundle) shares one."""

    input_bins: Mapping[str, ReferenceBins]
    output_bins: Mapping[str, ReferenceBins]
    drift_bins: Mapping[str, ReferenceBins]
    output_names: frozenset[str]
    # What sample capture counts a request's drift contribution on.
    capture_bins: Mapping[str, ReferenceBins]
    # The inputs to copy: a feature's key (``x[2]``) is counted from its input (``x``).
    input_sources: frozenset[str]
    classes_hint: int | None

    @classmethod
    def of(cls, reference: protocol.ReferenceProfile | None) -> _DriftPlan:
        if reference is None:
            return _NO_DRIFT
        with _shared_plans_lock:
            known = _shared_plans.get(id(reference))
            if known is not None and known[0] is reference:
                _shared_plans.move_to_end(id(reference))
                return known[1]
        plan = cls._build(reference)
        with _shared_plans_lock:
            # The profile is kept with its plan, so its id is not reused while cached.
            _shared_plans[id(reference)] = (reference, plan)
            while len(_shared_plans) > MAX_SHARED_DRIFT_PLANS:
                _shared_plans.popitem(last=False)
        return plan

    @classmethod
    def _build(cls, reference: protocol.ReferenceProfile | None) -> _DriftPlan:
        # A profile of synthetic inputs (or of unknown origin) never drives a judgement.
        judged = reference if reference is not None and reference.source == "validation" else None
        input_bins = _drift_bins_of(judged.inputs if judged else {})
        output_bins = _drift_bins_of(judged.outputs if judged else {})
        # One PSI per name; an output shadows an input of the same name.
        input_bins = {name: bins for name, bins in input_bins.items() if name not in output_bins}
        return cls(
            input_bins=input_bins,
            output_bins=output_bins,
            drift_bins={**input_bins, **output_bins},
            output_names=frozenset(output_bins),
            capture_bins={
                key: bins for key, bins in input_bins.items() if split_feature_key(key) is None
            },
            input_sources=frozenset(
                split[0] if (split := split_feature_key(key)) else key for key in input_bins
            ),
            classes_hint=(
                len(reference.class_distribution)
                if reference is not None and reference.class_distribution
                else None
            ),
        )


# The drift plans of the last few profiles, by the profile's identity.
MAX_SHARED_DRIFT_PLANS = 16
_shared_plans: OrderedDict[int, tuple[protocol.ReferenceProfile, _DriftPlan]] = OrderedDict()
_shared_plans_lock = threading.Lock()


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
        # A list: appends from many threads need no lock (each is atomic), and an empty
        # one costs a tenth of an empty deque (thousands of agents in one process).
        self._pending: list[_Pending] = []
        drift = _DriftPlan.of(reference)
        self._input_bins = drift.input_bins
        self._output_bins = drift.output_bins
        self._drift_bins = drift.drift_bins
        self._output_names = drift.output_names
        self._capture_bins = drift.capture_bins
        self._input_sources = drift.input_sources
        self._classes_hint = drift.classes_hint
        self._classifier: Classifier | None = None
        self._classifier_decided = False
        self._feedback_lock = threading.Lock()
        self._awaiting_feedback: OrderedDict[str, Mapping[str, np.ndarray]] = OrderedDict()
        self._total = _Accumulator(now_s)
        self._current = _Accumulator(now_s)
        # Set while a capture policy is on for the model (``agent.stats.capture``).
        self.capture: ModelCapture | None = None
        self._capture_failed = False

    def remember(self, request_id: str, outputs: Mapping[str, np.ndarray]) -> None:
        """Keep a request's class scores (by reference) for its ground truth to come back
        (``feedback``): the ``FEEDBACK_MEMORY`` most recent answers, each at most
        ``FEEDBACK_MAX_BYTES`` (so at most 16 MiB whatever the model's outputs)."""
        classifier = self._classifier  # decided once; read without the lock
        if classifier is not None:
            scores = outputs.get(classifier.name)
            if scores is None:
                return
            outputs = {classifier.name: scores}
        if sum(array.nbytes for array in outputs.values()) > FEEDBACK_MAX_BYTES:
            return
        with self._feedback_lock:
            self._awaiting_feedback[request_id] = outputs
            while len(self._awaiting_feedback) > FEEDBACK_MEMORY:
                self._awaiting_feedback.popitem(last=False)

    def feedback(self, request_id: str, label: int) -> Feedback:
        """Count the true class of an earlier request against what the model answered."""
        with self._feedback_lock:
            outputs = self._awaiting_feedback.pop(request_id, None)
        if outputs is None:
            return Feedback.UNKNOWN_REQUEST
        name = self.classifier_output
        scores = None if name is None else outputs.get(name)
        if scores is None or scores.ndim != 2 or scores.shape[0] != 1:
            return Feedback.NOT_ONE_CLASSIFIED_ROW
        predicted = int(np.argmax(scores[0]))
        with self._lock:
            self._current.labeled += 1
            self._current.labeled_correct += int(predicted == label)
        return Feedback.COUNTED

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
        if inputs and self._input_sources:
            copies = {}
            for name in self._input_sources:
                if (given := inputs.get(name)) is not None:
                    # An image is kept as its strided drift sample (a small copy).
                    copies[name] = copy = np.array(drift_sample(given), copy=True)
                    size_bytes += copy.nbytes
        pending = self._pending
        pending.append((latency_s, error, outputs, copies))
        if len(pending) >= PENDING_REQUESTS or size_bytes > MAX_PENDING_REQUEST_BYTES:
            with self._lock:
                self._measure_pending()
        capture = self.capture
        if capture is not None and inputs and outputs and not error:
            try:
                self._offer_capture(capture, inputs, outputs)
            except Exception:
                # Capture is best effort: it never fails the request it looks at. Said once.
                if not self._capture_failed:
                    self._capture_failed = True
                    logger.exception("sample capture failed on a request; it goes on")

    def _offer_capture(
        self,
        capture: ModelCapture,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Hand capture a request whose lowest top-1 confidence is below its policy's.

        Only with budget left; one numpy pass over this request's scores
        (``capture.request_confidence``); the inputs are copied (by ``offer``) only for a
        request that is kept. Until the classifier is decided, the pending requests are
        measured at once to decide it.
        """
        if not capture.has_budget():
            return
        if not self._classifier_decided:
            with self._lock:
                self._measure_pending()
        classifier = self._classifier
        name = capture.scores_output if classifier is None else classifier.name
        found = request_confidence(outputs, name)
        confidence = None
        if found is not None:
            capture.scores_output, confidence = found
            if confidence < capture.below_confidence:
                capture.offer(inputs, outputs, confidence)
                return
        # Drift, when the policy asks for it: whole-tensor reference histograms only.
        if capture.rare_input_share is not None and self._capture_bins:
            share = rare_input_share(inputs, self._capture_bins)
            if share is not None and share >= capture.rare_input_share:
                capture.offer(inputs, outputs, confidence, "input_drift")

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
        return current.snapshot(
            end_s=end_s, drift_bins=self._drift_bins, output_names=self._output_names
        )

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
        return total.snapshot(
            end_s=end_s, drift_bins=self._drift_bins, output_names=self._output_names
        )

    def _measure_pending(self) -> None:
        """Measure every pending request into the current window; the lock is held."""
        pending = self._pending
        count = len(pending)  # requests appended meanwhile wait for the next batch
        if count:
            batch = pending[:count]
            del pending[:count]  # appends go to the end: only the batch is removed
            self._measure(batch)

    def _measure(self, batch: list[_Pending]) -> None:
        acc = self._current
        latencies_s, errors, outputs, inputs = zip(*batch, strict=True)
        latencies_ms = np.array(latencies_s, dtype=np.float64) * 1000.0
        # Also NaN: a broken timer must not poison the histogram.
        latencies_ms[~(latencies_ms >= 0)] = 0.0
        acc.requests += len(batch)
        acc.errors += sum(map(bool, errors))
        acc.add_latencies(latencies_ms)

        columns = columns_of(outputs)
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
            input_columns = columns_of(inputs)
            for key, bins in self._input_bins.items():
                split = split_feature_key(key)
                given = input_columns.get(split[0] if split else key)
                if given is not None:
                    self._add_drift(acc, key, bins, given, None if split is None else split[1])

    @staticmethod
    def _add_drift(
        acc: _Accumulator,
        name: str,
        bins: ReferenceBins,
        column: Column,
        feature: int | None = None,
    ) -> None:
        values = column.values() if feature is None else column.feature_values(feature)
        counts = None if values is None else bins.count(values)
        if counts is not None:
            acc.drift[name] = _add_counts(acc.drift.get(name), counts)

    def _decide_classifier(self, outputs: Sequence[Arrays | None], nonfinite: set[int]) -> int:
        """Decide on the first finite request of the batch; the index classifying starts at."""
        for index, mapping in enumerate(outputs):
            if mapping and index not in nonfinite:
                decided, chosen = find_classifier(mapping, self._classes_hint)
                if decided:
                    self._classifier, self._classifier_decided = chosen, True
                    return index
        return len(outputs)


def _drift_bins_of(histograms: Mapping[str, protocol.Histogram]) -> dict[str, ReferenceBins]:
    # A histogram without mass (all fractions 0) is schema-valid but has no PSI.
    return {
        name: ReferenceBins.of(histogram.bin_edges, histogram.fractions)
        for name, histogram in histograms.items()
        if math.fsum(histogram.fractions) > 0
    }


_NO_DRIFT = _DriftPlan._build(None)
