"""The probation verdict on a newly activated model: continue, commit, or roll back, and why.

``ProbationJudge`` is pure: statistics and elapsed time in, a verdict out. The caller
judges the new model's cumulative statistics since activation (``StatsRecorder.cumulative``)
against the previous model's statistics on this device, whenever it likes (each window,
say); the first verdict other than ``CONTINUE`` ends probation.

Rules, with ``n = max(policy.min_requests, 1)``:

- A threshold is the largest value allowed: a check trips when the measured value is
  strictly greater (``>``), so a value exactly at the threshold passes, and a threshold of
  0 allows none at all.
- The non-finite rate is judged from the candidate's first request on, at any time: a
  model that emits NaN or infinities on live traffic is rolled back at once and never
  committed, not even unobserved at the end of an extension. (With a non-zero
  ``max_nonfinite_rate`` this is strict on purpose: one bad answer among the first few
  is a rate above the limit, and a rollback costs less than a broken model kept.)
- The error rate is judged as soon as the candidate has ``n`` requests, at any time: a
  failing model is rolled back before its window ends, while a few errors are no verdict.
- Drift is the model's, not the data's. Input drift is never judged: the previous model
  sees the same inputs, so it says nothing about the release (it is measured and
  reported, for alerts). Output drift against the release's reference profile is judged
  *relative to the baseline's* output drift against its own reference, on the same live
  traffic: when the world moves, both models' outputs move from their references and the
  excess stays small; a broken model's outputs move alone. It needs a baseline with
  output drift figures (else not judged, with a note: no way to tell the data's drift from
  the model's), a reference profile of validation data on both sides (the recorder
  measures none against a synthetic one), and ``max(n, MIN_DRIFT_REQUESTS)`` requests on
  both sides (``tensors.MIN_DRIFT_REQUESTS``, the controller's minimum too): the values
  of one request are not independent samples. Not judged is never a rollback:
  ``numbers["drift_judged"]`` is 0 and the verdict's message says why.
- Accuracy on labeled requests (the application's feedback) is judged against the
  previous model's on this device once both have ``tensors.accuracy.MIN_LABELED`` labels,
  and trips only when the drop's lower confidence bound exceeds the limit: labels are
  few, and noise alone must not roll back a good model. It is read only from the end of
  the window on (when probation decides), not at every earlier look.
- Relative checks (p95 latency over the baseline's p95, drop of mean top-1 confidence
  from the baseline's) also need a baseline with ``n`` requests and the figure on both
  sides (a classifier on both sides; a baseline p95 above 0). Without one they are
  skipped and ``numbers["baseline_used"]`` is 0. A slower p95 trips only when it is also
  ``min_p95_latency_increase_ms`` above the baseline's: sub-millisecond models move with
  the CPU's scheduling, not with the model.
- Checks run in this order, and the first that trips is the verdict's ``reason``:
  ``nonfinite_rate``, ``error_rate``, ``p95_latency_ratio``, ``confidence_drop``,
  ``drift``, ``label_accuracy_drop`` — from a broken model, to a failing one, a slower
  one, a less confident one, to one whose answers moved away from what it was validated
  to give, to one the application's own labels show wrong more often.
  ``numbers`` holds every value measured, tripped or not, with the thresholds.
- Nothing tripped: before ``policy.window_s`` -> ``CONTINUE``; from ``window_s`` on with
  ``n`` requests -> ``COMMIT``; with fewer the window is extended (``CONTINUE``) until
  ``window_s + max_extension_s``, then ``COMMIT_UNOBSERVED``: committed on the sandboxed
  self-test alone, and reported as such.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from protocol import ProbationPolicy
from tensors import MIN_DRIFT_REQUESTS
from tensors.accuracy import accuracy_drop

from .recorder import WindowStats

__all__ = [
    "ProbationJudge",
    "ProbationOutcome",
    "ProbationReason",
    "ProbationVerdict",
]


class ProbationOutcome(StrEnum):
    CONTINUE = "continue"
    COMMIT = "commit"
    COMMIT_UNOBSERVED = "commit_unobserved"
    ROLLBACK = "rollback"


class ProbationReason(StrEnum):
    """Which threshold tripped; stable codes that rollback events carry."""

    NONFINITE_RATE = "nonfinite_rate"
    ERROR_RATE = "error_rate"
    P95_LATENCY_RATIO = "p95_latency_ratio"
    CONFIDENCE_DROP = "confidence_drop"
    DRIFT = "drift"
    LABEL_ACCURACY_DROP = "label_accuracy_drop"


@dataclass(frozen=True)
class ProbationVerdict:
    """An outcome, the threshold that tripped (rollbacks only), and the numbers behind it."""

    outcome: ProbationOutcome
    reason: ProbationReason | None
    numbers: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def final(self) -> bool:
        """Whether probation ends with this verdict."""
        return self.outcome is not ProbationOutcome.CONTINUE


@dataclass(frozen=True)
class _Trip:
    reason: ProbationReason
    message: str


# A check: (candidate, usable baseline or None, numbers to add to) -> what tripped, if any.
_Check = Callable[[WindowStats, WindowStats | None, dict[str, float]], _Trip | None]
_NO_BASELINE = "no baseline with enough requests: latency and confidence not judged"


class ProbationJudge:
    """Judges one candidate model against ``policy`` and the previous model's ``baseline``.

    ``baseline`` is ``None`` when there is none to compare with (the first model on the
    device, or statistics lost); a baseline without requests counts as none.
    """

    def __init__(self, policy: ProbationPolicy, baseline: WindowStats | None) -> None:
        self.policy = policy
        self.baseline = baseline
        self.min_requests = max(policy.min_requests, 1)
        self.min_drift_requests = max(self.min_requests, MIN_DRIFT_REQUESTS)

    @property
    def deadline_s(self) -> float:
        """Elapsed time at which a model without enough requests is committed unobserved."""
        return self.policy.window_s + self.policy.max_extension_s

    def judge(self, candidate: WindowStats, *, elapsed_s: float) -> ProbationVerdict:
        """The verdict on ``candidate`` (cumulative since activation) ``elapsed_s`` after it."""
        policy = self.policy
        numbers: dict[str, float] = {
            "requests": float(candidate.requests),
            "min_requests": float(self.min_requests),
            "elapsed_s": elapsed_s,
            "window_s": policy.window_s,
        }
        baseline = self._usable_baseline(numbers)
        checks: list[_Check] = [
            self._nonfinite_rate,
            self._error_rate,
            self._p95_latency_ratio,
            self._confidence_drop,
            self._drift,
        ]
        if elapsed_s >= policy.window_s:
            # Judged when probation decides, not at every look: a test repeated each
            # window would fail a good model far more often than its confidence says.
            checks.append(self._label_accuracy_drop)
        # Every check runs, so that numbers hold every measured value, not just the first.
        trips = [t for check in checks if (t := check(candidate, baseline, numbers)) is not None]
        if trips:
            first = trips[0]
            return ProbationVerdict(
                ProbationOutcome.ROLLBACK, first.reason, numbers, f"rollback: {first.message}"
            )
        enough = candidate.requests >= self.min_requests
        seen = f"{candidate.requests} requests in {elapsed_s:g} s"
        drift_note = self._drift_note(candidate)
        if elapsed_s < policy.window_s:
            message = f"continue: {seen} of a {policy.window_s:g} s window{drift_note}"
            return ProbationVerdict(ProbationOutcome.CONTINUE, None, numbers, message)
        if enough:
            note = "" if baseline is not None else f"; {_NO_BASELINE}"
            message = f"commit: {seen}, no threshold tripped{note}{drift_note}"
            return ProbationVerdict(ProbationOutcome.COMMIT, None, numbers, message)
        if elapsed_s >= self.deadline_s:
            message = (
                f"commit unobserved: {seen}, fewer than {self.min_requests} by the end of the "
                f"extension; committed on the self-test alone{drift_note}"
            )
            return ProbationVerdict(ProbationOutcome.COMMIT_UNOBSERVED, None, numbers, message)
        message = (
            f"continue: window extended, {seen}, waiting for {self.min_requests} "
            f"until {self.deadline_s:g} s{drift_note}"
        )
        return ProbationVerdict(ProbationOutcome.CONTINUE, None, numbers, message)

    def _judged(self, candidate: WindowStats) -> bool:
        return candidate.requests >= self.min_requests

    def _drift_note(self, candidate: WindowStats) -> str:
        if not candidate.output_drift_psi:
            return ""
        why = self._why_drift_not_judged(candidate)
        if why is None:
            return ""
        psi = max(candidate.output_drift_psi.values())
        return f"; output drift not judged (PSI {psi:.3g}): {why}"

    def _why_drift_not_judged(self, candidate: WindowStats) -> str | None:
        baseline = self.baseline
        if candidate.requests < self.min_drift_requests:
            return f"{candidate.requests} requests, fewer than {self.min_drift_requests}"
        if baseline is None or not baseline.output_drift_psi:
            return "no baseline drift on this device to tell the data's drift from the model's"
        if baseline.requests < self.min_drift_requests:
            return (
                f"the baseline served {baseline.requests} requests, "
                f"fewer than {self.min_drift_requests}"
            )
        return None

    def _usable_baseline(self, numbers: dict[str, float]) -> WindowStats | None:
        baseline = self.baseline
        requests = 0 if baseline is None else baseline.requests
        numbers["baseline_requests"] = float(requests)
        usable = baseline is not None and requests >= self.min_requests
        numbers["baseline_used"] = 1.0 if usable else 0.0
        return baseline if usable else None

    def _nonfinite_rate(
        self, candidate: WindowStats, baseline: WindowStats | None, numbers: dict[str, float]
    ) -> _Trip | None:
        if candidate.requests == 0:
            return None
        rate, limit = candidate.nonfinite_rate, self.policy.max_nonfinite_rate
        numbers.update(nonfinite_rate=rate, max_nonfinite_rate=limit)
        if rate > limit:  # from the first request on: see the module doc
            return _Trip(
                ProbationReason.NONFINITE_RATE,
                f"non-finite outputs in {candidate.nonfinite_outputs} of {candidate.requests} "
                f"requests (rate {rate:.4g} > max {limit:g})",
            )
        return None

    def _error_rate(
        self, candidate: WindowStats, baseline: WindowStats | None, numbers: dict[str, float]
    ) -> _Trip | None:
        if candidate.requests == 0:
            return None
        rate, limit = candidate.error_rate, self.policy.max_error_rate
        numbers.update(error_rate=rate, max_error_rate=limit)
        if self._judged(candidate) and rate > limit:
            return _Trip(
                ProbationReason.ERROR_RATE,
                f"{candidate.errors} errors in {candidate.requests} requests "
                f"(rate {rate:.4g} > max {limit:g})",
            )
        return None

    def _p95_latency_ratio(
        self, candidate: WindowStats, baseline: WindowStats | None, numbers: dict[str, float]
    ) -> _Trip | None:
        if candidate.p95_ms is not None:
            numbers["p95_ms"] = candidate.p95_ms
        if baseline is None or baseline.p95_ms is None or candidate.p95_ms is None:
            return None
        numbers["baseline_p95_ms"] = baseline.p95_ms
        if baseline.p95_ms <= 0:
            return None  # no ratio to a zero latency
        ratio, limit = candidate.p95_ms / baseline.p95_ms, self.policy.max_p95_latency_ratio
        floor = self.policy.min_p95_latency_increase_ms
        numbers.update(
            p95_latency_ratio=ratio, max_p95_latency_ratio=limit, min_p95_latency_increase_ms=floor
        )
        slower = candidate.p95_ms - baseline.p95_ms >= floor
        if self._judged(candidate) and ratio > limit and slower:
            return _Trip(
                ProbationReason.P95_LATENCY_RATIO,
                f"p95 latency {candidate.p95_ms:.4g} ms is {ratio:.3g} times the previous "
                f"model's {baseline.p95_ms:.4g} ms (max {limit:g})",
            )
        return None

    def _confidence_drop(
        self, candidate: WindowStats, baseline: WindowStats | None, numbers: dict[str, float]
    ) -> _Trip | None:
        mean = candidate.top1_confidence_mean
        if mean is not None:
            numbers["top1_confidence_mean"] = mean
        if baseline is None or baseline.top1_confidence_mean is None or mean is None:
            return None
        before, limit = baseline.top1_confidence_mean, self.policy.max_confidence_drop
        drop = before - mean
        numbers.update(
            baseline_top1_confidence_mean=before, confidence_drop=drop, max_confidence_drop=limit
        )
        if self._judged(candidate) and drop > limit:
            return _Trip(
                ProbationReason.CONFIDENCE_DROP,
                f"mean top-1 confidence fell from {before:.4g} to {mean:.4g} "
                f"(drop {drop:.4g} > max {limit:g})",
            )
        return None

    def _drift(
        self, candidate: WindowStats, baseline: WindowStats | None, numbers: dict[str, float]
    ) -> _Trip | None:
        for name, psi in candidate.drift_psi.items():
            numbers[f"drift_psi.{name}"] = psi
        numbers["min_drift_requests"] = float(self.min_drift_requests)
        numbers["drift_judged"] = 0.0
        if not candidate.output_drift_psi:
            return None
        outputs = candidate.output_drift_psi
        worst = max(outputs, key=lambda name: outputs[name])
        psi, limit = outputs[worst], self.policy.max_drift_psi
        numbers.update(drift_psi=psi, max_drift_psi=limit)
        if self._why_drift_not_judged(candidate) is not None or self.baseline is None:
            return None
        before = max(self.baseline.output_drift_psi.values())
        excess = psi - before
        numbers.update(baseline_drift_psi=before, drift_excess=excess, drift_judged=1.0)
        if excess > limit:
            return _Trip(
                ProbationReason.DRIFT,
                f"output {worst!r} drifted from the reference profile (PSI {psi:.3g}) "
                f"{excess:.3g} more than the previous model's outputs from theirs "
                f"(PSI {before:.3g}; max excess {limit:g})",
            )
        return None

    def _label_accuracy_drop(
        self, candidate: WindowStats, baseline: WindowStats | None, numbers: dict[str, float]
    ) -> _Trip | None:
        numbers["labeled"] = float(candidate.labeled)
        if self.baseline is None:
            return None
        before = self.baseline
        drop = accuracy_drop(
            before.labeled, before.labeled_correct, candidate.labeled, candidate.labeled_correct
        )
        if drop is None:
            return None
        limit = self.policy.max_label_accuracy_drop
        numbers.update(
            label_accuracy=drop.after,
            baseline_label_accuracy=drop.before,
            label_accuracy_drop=drop.drop,
            label_accuracy_drop_lower_bound=drop.lower_bound,
            max_label_accuracy_drop=limit,
        )
        if drop.exceeds(limit):
            return _Trip(
                ProbationReason.LABEL_ACCURACY_DROP,
                f"accuracy on labeled requests fell from {drop.before:.4g} "
                f"({before.labeled} labels) to {drop.after:.4g} ({candidate.labeled} labels): "
                f"at least {drop.lower_bound:.3g} beyond noise (max {limit:g})",
            )
        return None
