"""Models for the converters tests, built once per session into a temporary directory.

Tests that write variants write them into their own ``tmp_path``; the session models are
never modified.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.demo_models import build_digits_model
from tests.model_factory import (
    broken_models,
    fp16_overflow_classifier,
    integer_feature_classifier,
    small_cnn,
    tiny_tflite,
)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def digits(models_dir: Path) -> tuple[Path, Path]:
    """(digits.onnx, digits-validation.npz): the sklearn MLP and its held-out samples."""
    return build_digits_model(models_dir)


@pytest.fixture(scope="session")
def digits_model(digits: tuple[Path, Path]) -> Path:
    return digits[0]


@pytest.fixture(scope="session")
def digits_validation(digits: tuple[Path, Path]) -> Path:
    return digits[1]


@pytest.fixture(scope="session")
def cnn_model(models_dir: Path) -> Path:
    return small_cnn(models_dir)


@pytest.fixture(scope="session")
def tflite_model(models_dir: Path) -> Path:
    return tiny_tflite(models_dir)


@pytest.fixture(scope="session")
def pressure(models_dir: Path) -> tuple[Path, Path]:
    return fp16_overflow_classifier(models_dir)


@pytest.fixture(scope="session")
def counts_model(models_dir: Path) -> Path:
    return integer_feature_classifier(models_dir)


@pytest.fixture(scope="session")
def broken(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> dict[str, Path]:
    return broken_models(tmp_path_factory.mktemp("broken"), digits_model)
