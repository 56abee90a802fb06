"""Budgeted sample capture on the device: which inputs are kept, how many, and where.

Capture is off unless a signed ``capture`` command turned it on for a model
(``protocol.CapturePolicy``); ``CaptureKeeper`` persists the policies
(``policies.json``, written atomically) so they survive a restart, and forgets each one
at its ``until`` (against the device's clock) or when an ``off`` order comes.

While a policy is on, the model's ``StatsRecorder`` holds that model's ``ModelCapture``
(its ``capture`` attribute) and hands it, from the request path, each request whose
lowest top-1 confidence is below the policy's (``request_confidence``) or, when the
policy asks, whose inputs fall far from the release's reference data
(``rare_input_share``). Invariants:

- **The request path stays cheap.** ``has_budget`` and ``offer`` take one lock and do
  O(1) work besides copying the inputs of a request that *is* kept; files are written
  by ``CaptureKeeper.flush``, off the request path.
- **At most ``per_hour`` samples in any hour** (a sliding hour of monotonic time): a
  flood beyond it is not copied at all. The times of the samples written in the last
  hour are kept on disk (``kept.json``), so a restart does not start a new budget; a
  new order does.
- **At most ``max_bytes`` on disk per model, new ones refused.** A sample that would
  take the model's queue over ``max_bytes`` is not written (nor, once the queue is full,
  copied): the samples already waiting are older and were kept first, and the queue
  empties as the controller accepts uploads. At most ``MAX_PENDING_SAMPLES`` wait in
  memory between flushes.
- **Nothing is kept for a model without a policy**, and turning a policy off deletes
  that model's samples not yet uploaded.

Queue files are ``queue/<model>/<captured ns>-<sha256>.npz``: names sort oldest first,
and the hash is the sample's name on the controller.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from durable import write_atomic
from protocol import CapturePolicy, CaptureReason, SampleMeta
from tensors import ReferenceBins, are_class_probabilities
from tensors.profile import drift_sample
from tensors.samples import write_sample

from ..clock import Clock
from ..errors import BadCapturePolicyError, LocalStateError

__all__ = [
    "HOUR_S",
    "MAX_PENDING_SAMPLES",
    "BadCapturePolicyError",
    "CaptureKeeper",
    "ModelCapture",
    "QueuedSample",
    "rare_input_share",
    "request_confidence",
]

logger = logging.getLogger(__name__)

HOUR_S = 3600.0
MAX_PENDING_SAMPLES = 32
# Counted for each sample on top of its arrays: more than ``.npz`` headers and metadata
# take, so the bytes written never exceed what was counted.
SAMPLE_OVERHEAD_BYTES = 8 * 1024
POLICIES_FILE = "policies.json"
KEPT_FILE = "kept.json"
QUEUE_DIR = "queue"


def request_confidence(
    outputs: Mapping[str, np.ndarray], classifier: str | None
) -> tuple[str, float] | None:
    """The output read as class scores and the lowest top-1 confidence among one
    request's rows; None: no classifier output, or a NaN or infinite one.

    The scores are output ``classifier`` when named (the recorder's classifier, or one
    found here before); otherwise the request's only float output, when it holds class
    probabilities once trailing dimensions of 1 are dropped (an image classifier's
    ``(N, K, 1, 1)``), a check the caller need make once (``ModelCapture.scores_output``).
    """
    if classifier is not None:
        name, scores = classifier, outputs.get(classifier)
        if scores is None:
            return None
    else:
        floats = [(n, a) for n, a in outputs.items() if a.dtype.kind == "f" and a.ndim >= 2]
        if len(floats) != 1:
            return None
        [(name, scores)] = floats
    if scores.ndim > 2 and all(d == 1 for d in scores.shape[2:]):
        scores = scores.reshape(scores.shape[:2])
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] < 2:
        return None
    if classifier is None and not are_class_probabilities(scores):
        return None
    lowest = float(scores.max(axis=1).min())
    return (name, lowest) if math.isfinite(lowest) else None


# A reference bin holding less than this share of the reference's values is "rare".
RARE_BIN_FRACTION = 0.01


def rare_input_share(
    inputs: Mapping[str, np.ndarray], bins: Mapping[str, ReferenceBins]
) -> float | None:
    """The share of one request's input values (pooled over the tensors ``bins`` has a
    histogram of, images on their drift grid) that fall in rare reference bins: its
    contribution to input drift. None: nothing to count."""
    total = rare = 0
    for name, reference in bins.items():
        given = inputs.get(name)
        if given is None:
            continue
        counts = reference.count(drift_sample(given).ravel())
        if counts is None:
            continue
        rare_bins = np.asarray(reference.fractions) < RARE_BIN_FRACTION
        total += int(counts.sum())
        rare += int(counts[rare_bins].sum())
    return rare / total if total else None


@dataclass(frozen=True)
class _Kept:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    confidence: float | None
    captured_at: datetime
    nbytes: int
    reason: CaptureReason


@dataclass(frozen=True)
class QueuedSample:
    model: str
    sha256: str
    path: Path
    size_bytes: int


class ModelCapture:
    """One model's capture under one policy; thread-safe (serving threads call it)."""

    def __init__(
        self,
        policy: CapturePolicy,
        *,
        device_id: str,
        release_version: int | None,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
        queued_bytes: int = 0,
    ) -> None:
        self.policy = policy
        self.below_confidence = policy.below_confidence
        self.rare_input_share = policy.rare_input_share
        self.device_id = device_id
        self.release_version = release_version
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._kept_at: deque[float] = deque()
        self._pending: list[_Kept] = []
        # Bytes on disk plus bytes waiting in memory; the flush keeps it exact.
        self._bytes = queued_bytes
        self.refused_full = 0
        # The output found to hold class probabilities when the recorder has no classifier.
        self.scores_output: str | None = None

    def has_budget(self) -> bool:
        """Whether one more sample may be kept now (O(1): the hour's count and the bytes)."""
        with self._lock:
            return self._has_budget(self._monotonic())

    def _has_budget(self, now_s: float) -> bool:
        kept_at = self._kept_at
        while kept_at and now_s - kept_at[0] >= HOUR_S:
            kept_at.popleft()
        return (
            len(kept_at) < self.policy.per_hour
            and self._bytes < self.policy.max_bytes
            and len(self._pending) < MAX_PENDING_SAMPLES
        )

    def offer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        confidence: float | None,
        reason: CaptureReason = "low_confidence",
    ) -> bool:
        """Keep a copy of the inputs (the outputs by reference) if the budget allows."""
        with self._lock:
            now_s = self._monotonic()
            if not self._has_budget(now_s):
                return False
            copies = {name: np.array(array, copy=True) for name, array in inputs.items()}
            nbytes = SAMPLE_OVERHEAD_BYTES + sum(a.nbytes for a in copies.values())
            nbytes += sum(a.nbytes for a in outputs.values())
            if self._bytes + nbytes > self.policy.max_bytes:
                self.refused_full += 1
                return False
            self._kept_at.append(now_s)
            self._bytes += nbytes
            self._pending.append(
                _Kept(copies, dict(outputs), confidence, self._clock.now(), nbytes, reason)
            )
            return True

    def take(self) -> list[_Kept]:
        """The samples kept since the last call; their bytes stay counted until ``settle``."""
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def settle(self, kept_bytes: int, written_bytes: int) -> None:
        """Account for a flush: ``kept_bytes`` estimated in memory became ``written_bytes``."""
        with self._lock:
            self._bytes += written_bytes - kept_bytes

    def uploaded(self, size_bytes: int) -> None:
        with self._lock:
            self._bytes = max(self._bytes - size_bytes, 0)


class CaptureKeeper:
    """The device's capture policies and its queue of samples waiting for upload."""

    def __init__(
        self,
        directory: Path,
        *,
        device_id: str,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.device_id = device_id
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._captures: dict[str, ModelCapture] = {}
        # Captures of a release that no longer serves, until their last samples are written.
        self._retired: list[tuple[str, ModelCapture]] = []
        self.policies: dict[str, CapturePolicy] = self._load()
        # When the samples written within the last hour were captured, per model.
        self._kept_wall: dict[str, list[datetime]] = self._load_kept()

    # --- policies -------------------------------------------------------------------

    def _load(self) -> dict[str, CapturePolicy]:
        path = self.directory / POLICIES_FILE
        try:
            raw = json.loads(path.read_bytes())
            return {name: CapturePolicy.model_validate(value) for name, value in raw.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, ValidationError) as exc:
            # Off is the safe reading of a policy that cannot be read.
            logger.warning("capture policies unreadable, capture is off: %s", exc)
            return {}

    def _load_kept(self) -> dict[str, list[datetime]]:
        try:
            raw = json.loads((self.directory / KEPT_FILE).read_bytes())
            return {
                str(model): [datetime.fromisoformat(t) for t in times]
                for model, times in raw.items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            logger.warning("capture budget unreadable, counting from now: %s", exc)
            return {}

    def _persist_kept(self) -> None:
        hour_ago = self._clock.now() - timedelta(seconds=HOUR_S)
        self._kept_wall = {
            model: recent
            for model, times in self._kept_wall.items()
            if (recent := [t for t in times if t > hour_ago])
        }
        data = {m: [t.isoformat() for t in times] for m, times in self._kept_wall.items()}
        try:
            write_atomic(self.directory / KEPT_FILE, json.dumps(data).encode())
        except OSError as exc:
            logger.warning("could not keep the capture budget: %s", exc)

    def _persist(self) -> None:
        data = {name: policy.to_args() for name, policy in sorted(self.policies.items())}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self.directory / POLICIES_FILE, json.dumps(data).encode())
        except OSError as exc:
            raise LocalStateError(f"cannot write the capture policies: {exc}") from exc

    def order(self, args: dict[str, Any]) -> dict[str, Any]:
        """Apply a verified capture command's ``args``; returns what the event reports."""
        try:
            policy = CapturePolicy.from_args(args)
        except ValidationError as exc:
            raise BadCapturePolicyError(f"not a capture policy: {exc}") from exc
        with self._lock:
            if policy.off or policy.until <= self._clock.now():
                self._forget(policy.model)
            else:
                self.policies[policy.model] = policy
                # A new budget under the new policy.
                self._captures.pop(policy.model, None)
                self._kept_wall.pop(policy.model, None)
            self._persist()
        return {
            "model": policy.model,
            "capture": not policy.off and policy.model in self.policies,
            "until": policy.until.isoformat(),
        }

    def _forget(self, model: str) -> None:
        self.policies.pop(model, None)
        self._captures.pop(model, None)
        self._retired = [(name, c) for name, c in self._retired if name != model]
        for path in self._queue_files(model):
            path.unlink(missing_ok=True)

    def active(self, model: str) -> CapturePolicy | None:
        """The policy on for ``model`` now; an expired one is forgotten here."""
        with self._lock:
            policy = self.policies.get(model)
            if policy is not None and policy.until <= self._clock.now():
                logger.info("capture of %s ended at %s", model, policy.until.isoformat())
                self._forget(model)
                self._persist()
                return None
            return policy

    def capture_for(self, model: str, release_version: int | None) -> ModelCapture | None:
        """The ``ModelCapture`` to hand ``model``'s recorder, or None: capture is off."""
        policy = self.active(model)
        if policy is None:
            return None
        with self._lock:
            capture = self._captures.get(model)
            if capture is None or capture.release_version != release_version:
                capture = ModelCapture(
                    policy,
                    device_id=self.device_id,
                    release_version=release_version,
                    clock=self._clock,
                    monotonic=self._monotonic,
                    queued_bytes=sum(s.size_bytes for s in self.queued(model)),
                )
                previous = self._captures.get(model)
                if previous is not None:  # the hour's count survives a new release
                    capture._kept_at = previous._kept_at
                    self._retired.append((model, previous))
                else:  # and a restart: the samples written within the hour count
                    now, now_s = self._clock.now(), self._monotonic()
                    ages_s = sorted(
                        (now - t).total_seconds() for t in self._kept_wall.get(model, [])
                    )
                    capture._kept_at.extend(
                        now_s - age for age in reversed(ages_s) if 0 <= age < HOUR_S
                    )
                self._captures[model] = capture
            return capture

    # --- the queue on disk ----------------------------------------------------------

    def _queue_files(self, model: str) -> list[Path]:
        directory = self.directory / QUEUE_DIR / model
        try:
            return sorted(p for p in directory.iterdir() if p.suffix == ".npz")
        except FileNotFoundError:
            return []

    def queued(self, model: str | None = None) -> list[QueuedSample]:
        """Samples waiting for upload, oldest first (of one model, or of all)."""
        models = [model] if model is not None else sorted(self._queued_models())
        found = []
        for name in models:
            for path in self._queue_files(name):
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                sha256 = path.stem.rpartition("-")[2]
                found.append(QueuedSample(name, sha256, path, size))
        return sorted(found, key=lambda s: s.path.name)

    def _queued_models(self) -> list[str]:
        try:
            return [p.name for p in (self.directory / QUEUE_DIR).iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []

    def flush(self) -> int:
        """Write the samples kept in memory to the queue; returns how many were written."""
        with self._lock:
            captures = [*self._retired, *self._captures.items()]
            self._retired = []
        written = 0
        for model, capture in captures:
            for kept in capture.take():
                data = write_sample(
                    SampleMeta(
                        device_id=self.device_id,
                        model=model,
                        release_version=capture.release_version,
                        captured_at=kept.captured_at,
                        reason=kept.reason,
                        confidence=kept.confidence,
                        inputs=sorted(kept.inputs),
                        outputs=sorted(kept.outputs),
                    ),
                    kept.inputs,
                    kept.outputs,
                )
                sha256 = hashlib.sha256(data).hexdigest()
                stamp = int(kept.captured_at.timestamp() * 1e9)
                path = self.directory / QUEUE_DIR / model / f"{stamp:020d}-{sha256}.npz"
                with self._lock:
                    # A policy turned off or replaced meanwhile: nothing more is written.
                    if self.policies.get(model) is not capture.policy:
                        continue
                    try:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        write_atomic(path, data)
                    except OSError as exc:
                        capture.settle(kept.nbytes, 0)
                        logger.warning("could not keep a sample of %s: %s", model, exc)
                        continue
                capture.settle(kept.nbytes, len(data))
                self._kept_wall.setdefault(model, []).append(kept.captured_at)
                written += 1
        if written:
            with self._lock:
                self._persist_kept()
        return written

    def delete(self, sample: QueuedSample) -> None:
        """Forget a sample (the controller accepted it, or refused it for good)."""
        sample.path.unlink(missing_ok=True)
        with self._lock:
            capture = self._captures.get(sample.model)
        if capture is not None:
            capture.uploaded(sample.size_bytes)
