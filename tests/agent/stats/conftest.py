"""A seeded generator and a reference profile of a small tabular classifier."""

from __future__ import annotations

import numpy as np
import pytest

from protocol import ReferenceProfile
from tests.agent.stats.profiles import histogram_of, softmax


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261130)


@pytest.fixture
def tabular_reference(rng: np.random.Generator) -> ReferenceProfile:
    """A 4-feature standard-normal input ``x`` and a 3-class probability output ``probs``."""
    x = rng.normal(size=(5000, 4))
    probs = softmax(rng.normal(size=(5000, 3)))
    counts = np.bincount(probs.argmax(axis=1), minlength=3)
    return ReferenceProfile(
        source="validation",
        inputs={"x": histogram_of(x)},
        outputs={"probs": histogram_of(probs)},
        top1_confidence_mean=float(probs.max(axis=1).mean()),
        class_distribution=[float(c) / 5000 for c in counts],
    )
