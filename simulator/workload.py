"""What the applications on a simulated device ask: digits images, drifting over time.

The inputs are scikit-learn's 8x8 digits (shipped with the package, nothing downloaded),
scaled to [0, 1] as the demo's model was trained. From ``drift_start_s`` on, Gaussian
noise whose standard deviation grows by ``drift_per_min`` per minute is added, clipped to
[0, 1]: the input distribution moves away from the release's reference profile.
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import numpy.typing as npt

from .scenario import WorkloadSpec

__all__ = ["DigitsWorkload", "digits_features"]

Features = npt.NDArray[np.float32]


@functools.cache
def digits_features() -> Features:
    from sklearn.datasets import load_digits

    features = load_digits().data / 16.0
    return np.ascontiguousarray(features, dtype=np.float32)


class DigitsWorkload:
    def __init__(self, spec: WorkloadSpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self._noise = np.random.default_rng(rng.getrandbits(32))
        self._features = digits_features()

    def next_delay_s(self) -> float:
        """Seconds until the next request: a Poisson process at the spec's rate (never,
        at a rate of 0)."""
        if self.spec.requests_per_s <= 0:
            return math.inf
        return self._rng.expovariate(self.spec.requests_per_s)

    def next_input(self, elapsed_s: float) -> Features:
        row = self._features[self._rng.randrange(len(self._features))][np.newaxis, :]
        drift = self.drift_sigma(elapsed_s)
        if drift <= 0.0:
            return np.asarray(row, dtype=np.float32)
        noisy = row + self._noise.normal(0.0, drift, size=row.shape).astype(np.float32)
        return np.asarray(np.clip(noisy, 0.0, 1.0), dtype=np.float32)

    def drift_sigma(self, elapsed_s: float) -> float:
        start = self.spec.drift_start_s
        if start is None or elapsed_s < start:
            return 0.0
        return self.spec.drift_per_min * (elapsed_s - start) / 60.0
