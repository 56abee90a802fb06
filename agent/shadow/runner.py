"""Run a shadow model on copies of live requests, off the request path, within a budget.

The serving version calls ``offer`` after it answered a request (``LoadedVersion.tap``).
``offer`` takes the request only when the shadow is idle and the budget has credit, copies
its inputs (the caller may reuse them) and wakes the shadow's own thread; otherwise it
counts the request as skipped. It never waits: a busy lock, a busy shadow or a spent
budget is a skip.

Invariants:
- the shadow never answers a request and never delays one beyond the copy of its inputs:
  it runs in one thread of its own, at the lowest CPU priority the system offers
  (``SCHED_IDLE`` on Linux, else nice 19), and the model is loaded in that thread so the
  runtime's worker threads inherit the priority;
- time spent running the shadow (and the reference, below) is at most
  ``max_cpu_fraction`` of the elapsed time plus ``MAX_CREDIT_S``: credit accrues at that
  rate and each sample spends its wall time;
- the latency figures are CPU times, not wall times: the candidate and a copy of the
  serving model (the *reference*, run on one sample in ``REFERENCE_EVERY``) each run on
  one thread, the shadow's, so preemption by the requests the device serves stretches
  neither, and their ratio compares like with like on the same inputs;
- every sample counts once in one window; ``take_window`` hands the sums over and starts
  the next window under the same lock the worker adds with.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

import protocol
from protocol.histograms import LATENCY_BOUNDS_MS, LATENCY_BUCKETS

from ..errors import AgentError, ModelLoadError
from ..serving.server import LoadedVersion
from ..stats.classes import find_classifier
from .compare import compare_outputs

__all__ = ["MAX_CREDIT_S", "REFERENCE_EVERY", "ShadowRunner", "lower_thread_priority"]

logger = logging.getLogger(__name__)

# Credit saved while traffic is light: at most this much shadow time runs in one burst.
MAX_CREDIT_S = 0.5
# One sample in this many is also run on the copy of the serving model, for the ratio of
# CPU times (both models on one thread, in the same thread, on the same inputs).
REFERENCE_EVERY = 4


def lower_thread_priority() -> str:
    """Put the calling thread (and threads it starts) at the lowest CPU priority."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    with contextlib.suppress(AttributeError, OSError):
        # On Linux, PRIO_PROCESS with a thread id sets that thread alone.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        return "nice"
    return "normal"


class _Sums:
    """One window's figures, as ``protocol.ShadowWindow`` reports them."""

    def __init__(self) -> None:
        self.samples = self.skipped = self.errors = self.nonfinite = 0
        self.compared_rows = self.agreed_rows = 0
        self.confidence_sum = self.serving_confidence_sum = self.distance_sum = 0.0
        self.cpu_counts = [0] * LATENCY_BUCKETS
        self.serving_cpu_counts = [0] * LATENCY_BUCKETS


class ShadowRunner:
    """One shadow model beside one serving model; ``start`` it, ``offer`` it requests."""

    def __init__(
        self,
        release: protocol.ReleaseRef,
        load: Callable[[], LoadedVersion],
        *,
        max_cpu_fraction: float,
        load_reference: Callable[[], LoadedVersion] | None = None,
        reference_every: int = REFERENCE_EVERY,
    ) -> None:
        """``load`` loads the candidate, ``load_reference`` a copy of the serving model;
        both run in the shadow's thread, on one thread each (their CPU time is then
        their whole cost)."""
        self.release = release
        self.max_cpu_fraction = max_cpu_fraction
        self._load = load
        self._load_reference = load_reference
        self._reference_every = reference_every
        self._loaded: LoadedVersion | None = None
        self._reference: LoadedVersion | None = None
        self._load_error: BaseException | None = None
        self._ready = threading.Event()
        self._wake = threading.Event()
        self._closed = False
        self._offer_lock = threading.Lock()
        self._pending: tuple[dict[str, np.ndarray], Mapping[str, np.ndarray]] | None = None
        self._credit_s = 0.0
        self._credit_at = time.perf_counter()
        self._sums_lock = threading.Lock()
        self._sums = _Sums()
        self._classifier: str | None = None
        self._classifier_known = False
        self._runs = 0
        self.priority = "normal"
        self.busy_s = 0.0  # time spent running the shadow, in all
        self._thread = threading.Thread(
            target=self._run, name=f"shadow {release.model} v{release.version}", daemon=True
        )

    def start(self) -> LoadedVersion:
        """Load the model in the shadow's thread and wait for it; blocking (use a thread).

        Raises ``ModelLoadError`` when it does not load.
        """
        self._thread.start()
        self._ready.wait()
        if self._loaded is None:
            raise ModelLoadError(f"the shadow {self.release} did not load: {self._load_error}")
        return self._loaded

    @property
    def busy(self) -> bool:
        """A request is waiting for the shadow or running on it."""
        return self._pending is not None

    def close(self) -> None:
        """Stop the thread after the sample it runs (or the load under way), if any; the
        models are let go of. Returns at once: ``join`` waits."""
        self._closed = True
        self._wake.set()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    # -- the request path --------------------------------------------------------------

    def offer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Take this request for the shadow if it is idle and the budget allows; never waits."""
        if not self._offer_lock.acquire(blocking=False):
            self._skip()
            return
        try:
            now = time.perf_counter()
            credit = self._credit_s + (now - self._credit_at) * self.max_cpu_fraction
            self._credit_s, self._credit_at = min(credit, MAX_CREDIT_S), now
            if self._pending is not None or self._closed or self._credit_s <= 0:
                self._skip()
                return
            self._pending = ({name: np.array(v, copy=True) for name, v in inputs.items()}, outputs)
        finally:
            self._offer_lock.release()
        self._wake.set()

    def _skip(self) -> None:
        with self._sums_lock:
            self._sums.skipped += 1

    # -- the shadow's thread -----------------------------------------------------------

    def _run(self) -> None:
        self.priority = lower_thread_priority()
        try:
            self._loaded = self._load()
            if self._load_reference is not None:
                self._reference = self._load_reference()
        except (AgentError, OSError) as exc:  # reported by start(); the thread ends
            self._loaded = None
            self._load_error = exc
        finally:
            self._ready.set()  # whatever happened, start() stops waiting
        if self._loaded is None or self._closed:
            self._loaded = self._reference = None  # closed while it loaded
            self._drop_pending()
            return
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                break
            pending = self._pending
            if pending is None:
                continue
            try:
                self._run_one(*pending)
            except Exception:  # a failed comparison must not end the shadow
                logger.exception("shadow %s: comparing a sample failed", self.release)
            finally:
                self._pending = None
        self._drop_pending()
        self._loaded = self._reference = None

    def _drop_pending(self) -> None:
        """A request taken, then closed before it ran: never compared, so skipped."""
        if self._pending is not None:
            self._pending = None
            self._skip()

    def _run_one(self, inputs: dict[str, np.ndarray], serving: Mapping[str, np.ndarray]) -> None:
        loaded = self._loaded
        assert loaded is not None
        started, started_cpu = time.perf_counter(), time.thread_time()
        try:
            outputs: dict[str, np.ndarray] | None = loaded.infer(inputs)
        except AgentError as exc:
            logger.debug("shadow %s failed a sample: %s", self.release, exc)
            outputs = None
        cpu_s = time.thread_time() - started_cpu
        reference_cpu_s = None
        if self._reference is not None and self._runs % self._reference_every == 0:
            reference_cpu_s = _cpu_time_of(self._reference, inputs)
        self._runs += 1
        elapsed_s = time.perf_counter() - started
        with self._offer_lock:
            self._credit_s -= elapsed_s
        self.busy_s += elapsed_s
        serving = _as_rows(serving)
        if outputs is not None and not self._classifier_known:
            known, classifier = find_classifier(serving, None)
            self._classifier_known = known
            self._classifier = classifier.name if classifier else None
        comparison = (
            None
            if outputs is None
            else compare_outputs(serving, _as_rows(outputs), classifier=self._classifier)
        )
        with self._sums_lock:
            sums = self._sums
            sums.samples += 1
            sums.cpu_counts[_bucket(cpu_s)] += 1
            if reference_cpu_s is not None:
                sums.serving_cpu_counts[_bucket(reference_cpu_s)] += 1
            if comparison is None or comparison.mismatched:
                sums.errors += 1
            elif comparison.nonfinite:
                sums.nonfinite += 1
            else:
                sums.compared_rows += comparison.compared_rows
                sums.agreed_rows += comparison.agreed_rows
                sums.confidence_sum += comparison.confidence_sum
                sums.serving_confidence_sum += comparison.serving_confidence_sum
                sums.distance_sum += comparison.distance

    # -- telemetry ---------------------------------------------------------------------

    def take_window(self) -> protocol.ShadowWindow | None:
        """The figures since the last call (None when no request came), and start anew."""
        with self._sums_lock:
            sums, self._sums = self._sums, _Sums()
        if sums.samples == 0 and sums.skipped == 0:
            return None
        return protocol.ShadowWindow(
            release=self.release,
            samples=sums.samples,
            skipped=sums.skipped,
            errors=sums.errors,
            nonfinite=sums.nonfinite,
            compared_rows=sums.compared_rows,
            agreed_rows=sums.agreed_rows,
            confidence_sum=sums.confidence_sum,
            serving_confidence_sum=sums.serving_confidence_sum,
            distance_sum=sums.distance_sum,
            cpu_counts=sums.cpu_counts,
            serving_cpu_counts=sums.serving_cpu_counts,
        )


def _cpu_time_of(loaded: LoadedVersion, inputs: Mapping[str, np.ndarray]) -> float | None:
    started = time.thread_time()
    try:
        loaded.infer(inputs)
    except AgentError:
        return None
    return time.thread_time() - started


def _as_rows(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Class scores shaped [N, K, 1, 1] (a convolutional head) as [N, K]; the rest as is."""
    return {
        name: array.reshape(array.shape[:2])
        if array.ndim > 2 and all(dim == 1 for dim in array.shape[2:])
        else array
        for name, array in outputs.items()
    }


def _bucket(seconds: float) -> int:
    return bisect.bisect_left(LATENCY_BOUNDS_MS, seconds * 1000.0)
