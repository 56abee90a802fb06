"""What the applications on a simulated device ask: digits images, drifting over time.

The inputs are scikit-learn's 8x8 digits (shipped with the package, nothing downloaded),
scaled to [0, 1] as the demo's model was trained. They are read from the package's data
file without importing scikit-learn, whose import (with SciPy) would add some 150 MiB to
a process that runs thousands of agents; ``load_digits`` is the fallback.

From ``drift_start_s`` on, Gaussian noise whose standard deviation grows by
``drift_per_min`` per minute is added, clipped to [0, 1]: the input distribution moves
away from the release's reference profile.

One ``DigitsWorkload`` serves the whole fleet (``simulator.traffic``): its draws (request
times, the device asked, the row, the noise) come from the one generator it is given.
The noise generator is made on the first noisy input: most runs have no drift.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import random
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .scenario import WorkloadSpec

__all__ = ["DigitsWorkload", "digits_features"]

Features = npt.NDArray[np.float32]


@functools.cache
def digits_features() -> Features:
    rows = _digits_file_rows()
    if rows is None:
        from sklearn.datasets import load_digits

        pixels = load_digits().data
    else:
        pixels = rows[:, :-1]  # the last column is the digit
    return np.ascontiguousarray(pixels / 16.0, dtype=np.float32)


def _digits_file_rows() -> npt.NDArray[np.float64] | None:
    """The rows of scikit-learn's ``digits.csv.gz`` (64 pixels, then the digit), found
    without importing scikit-learn; None when this installation has no such file."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as lines:
                return np.loadtxt(lines, delimiter=",", dtype=np.float64)
    return None


class DigitsWorkload:
    def __init__(self, spec: WorkloadSpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self._noise_seed = rng.getrandbits(32)
        self._noise: np.random.Generator | None = None
        self._features = digits_features()

    def next_delay_s(self, requests_per_s: float | None = None) -> float:
        """Seconds until the next request: a Poisson process at ``requests_per_s``
        (default: the spec's rate; never, at a rate of 0)."""
        rate = self.spec.requests_per_s if requests_per_s is None else requests_per_s
        if rate <= 0:
            return math.inf
        return self._rng.expovariate(rate)

    def pick(self, count: int) -> int:
        """Which of ``count`` devices the next request goes to, uniformly."""
        return self._rng.randrange(count)

    def next_input(self, elapsed_s: float) -> Features:
        row = self._features[self._rng.randrange(len(self._features))][np.newaxis, :]
        drift = self.drift_sigma(elapsed_s)
        if drift <= 0.0:
            return np.asarray(row, dtype=np.float32)
        if self._noise is None:
            self._noise = np.random.default_rng(self._noise_seed)
        noisy = row + self._noise.normal(0.0, drift, size=row.shape).astype(np.float32)
        return np.asarray(np.clip(noisy, 0.0, 1.0), dtype=np.float32)

    def drift_sigma(self, elapsed_s: float) -> float:
        start = self.spec.drift_start_s
        if start is None or elapsed_s < start:
            return 0.0
        return self.spec.drift_per_min * (elapsed_s - start) / 60.0
