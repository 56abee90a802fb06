"""Drift per feature and per colour channel: one channel moving is not diluted by the rest.

The reference profile is made as the converter makes it (``converters.profile`` through
``tensors.feature_histograms`` on the validation images), and live images are counted by
the recorder on the strided sample ``tensors.drift_sample`` keeps of each.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.stats.recorder import StatsRecorder
from protocol import Histogram, ReferenceProfile
from tensors.profile import (
    MAX_DRIFT_PIXELS,
    MAX_FEATURE_HISTOGRAMS,
    drift_sample,
    feature_axis,
    feature_histograms,
    histogram,
    split_feature_key,
)


def _images(rng: np.random.Generator, count: int, *, red_shift: float = 0.0) -> np.ndarray:
    images = rng.uniform(0.0, 1.0, size=(count, 3, 224, 224)).astype(np.float32)
    images[:, 0] = np.clip(images[:, 0] + red_shift, 0.0, 1.0)
    return images


def _reference(images: np.ndarray) -> ReferenceProfile:
    whole = histogram(drift_sample(images))
    assert whole is not None
    inputs = {"image": Histogram(**whole)}
    inputs |= {k: Histogram(**h) for k, h in feature_histograms("image", images).items()}
    return ReferenceProfile(source="validation", inputs=inputs)


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((8, 64), 1), ((1, 3, 224, 224), 1), ((1, 224, 224, 3), 3), ((1, 1, 28, 28), 1)],
)
def test_the_feature_axis_is_the_columns_or_the_channels(shape: tuple[int, ...], axis: int) -> None:
    assert feature_axis(shape) == axis


def test_shapes_without_features_or_channels_have_no_axis() -> None:
    assert feature_axis((1, 64, 7, 7)) is None  # 64 "channels": a feature map, not colours
    assert feature_axis((10,)) is None


def test_an_image_is_counted_on_a_bounded_grid_whatever_its_resolution() -> None:
    for side in (224, 512, 1080):
        sample = drift_sample(np.zeros((1, 3, side, side), dtype=np.float32))
        assert sample.shape[1] == 3
        assert sample.shape[2] * sample.shape[3] <= MAX_DRIFT_PIXELS


def test_features_past_the_cap_get_no_histogram_of_their_own() -> None:
    wide = np.zeros((10, MAX_FEATURE_HISTOGRAMS + 1), dtype=np.float32)
    assert feature_histograms("x", wide) == {}
    assert len(feature_histograms("x", wide[:, :MAX_FEATURE_HISTOGRAMS])) == MAX_FEATURE_HISTOGRAMS
    assert split_feature_key("x[3]") == ("x", 3)
    assert split_feature_key("x") is None


def test_one_channel_drifting_is_seen_on_its_own_and_diluted_in_the_whole() -> None:
    rng = np.random.default_rng(6)
    reference = _reference(_images(rng, 64))
    recorder = StatsRecorder(reference=reference, now_s=0.0)
    for image in _images(rng, 8, red_shift=0.3):
        recorder.record(latency_s=0.002, inputs={"image": image[None]}, outputs=None, error=False)

    psi = recorder.cumulative().drift_psi

    assert set(psi) == {"image", "image[0]", "image[1]", "image[2]"}
    assert psi["image[0]"] > 0.25  # the red channel moved
    assert psi["image[1]"] < 0.05
    assert psi["image[2]"] < 0.05
    assert psi["image"] < psi["image[0]"] / 2  # pooled over the three, it is diluted


def test_unchanged_images_read_no_drift_in_any_channel() -> None:
    rng = np.random.default_rng(7)
    reference = _reference(_images(rng, 64))
    recorder = StatsRecorder(reference=reference, now_s=0.0)
    for image in _images(rng, 8):
        recorder.record(latency_s=0.002, inputs={"image": image[None]}, outputs=None, error=False)

    assert max(recorder.cumulative().drift_psi.values()) < 0.05
