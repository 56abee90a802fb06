"""The sample models: a digits classifier, a degraded copy of it, and a second model.

Both are scikit-learn MLPs on the 8x8 digits that ship with scikit-learn (nothing is
downloaded), converted to ONNX with skl2onnx, with the same inputs and outputs. The
degraded one is the good one with its output layer scaled down: it still ranks classes
about as well, but its confidence collapses, which is what a bad retraining or a broken
calibration looks like in the field. Probation on the canary catches it (confidence drop).
The second model, ``digits-lite`` (a smaller MLP on the same inputs), is what the demo
rolls out beside the first: a device runs both.

``build_digits_model`` is the one digits builder: the demo, the tests, the benchmarks and
``examples/make_digits_model.py`` all use it, so the documented model is the tested one.
Training is seeded: the same scikit-learn gives the same bytes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DemoModels",
    "build_demo_models",
    "build_digits_model",
    "build_mislabeled_digits_model",
]

SEED = 0
OPSET = 17
DEGRADED_OUTPUT_SCALE = 0.15
LITE_HIDDEN_UNITS = 16


@dataclass(frozen=True)
class DemoModels:
    good: Path
    degraded: Path
    validation: Path
    test_accuracy: float
    degraded_accuracy: float
    lite: Path  # the second model
    lite_accuracy: float


@dataclass(frozen=True)
class _Trained:
    classifier: Any  # sklearn's MLPClassifier, imported lazily
    x_test: np.ndarray
    y_test: np.ndarray


def _train_digits_classifier(hidden_units: int = 64) -> _Trained:
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    features, labels = load_digits(return_X_y=True)
    features = (features / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.25, random_state=SEED, stratify=labels
    )
    classifier = MLPClassifier(hidden_layer_sizes=(hidden_units,), max_iter=300, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x_train, y_train)
    return _Trained(classifier, x_test, y_test)


def _save_validation(trained: _Trained, directory: Path) -> Path:
    """Held-out inputs under ``input`` and their ``labels``."""
    validation = directory / "digits-validation.npz"
    np.savez(validation, input=trained.x_test, labels=trained.y_test.astype(np.int64))
    return validation


def build_digits_model(directory: Path) -> tuple[Path, Path]:
    """``directory/digits.onnx`` (input ``input`` [N, 64]; outputs ``label`` and
    ``probabilities``) and its held-out validation set ``digits-validation.npz``."""
    directory.mkdir(parents=True, exist_ok=True)
    trained = _train_digits_classifier()
    model = directory / "digits.onnx"
    _save_onnx(trained.classifier, model)
    return model, _save_validation(trained, directory)


def build_mislabeled_digits_model(directory: Path) -> Path:
    """``directory/digits-mislabeled.onnx``: the digits network with its classes shifted by
    one (what a label-mapping bug in a training pipeline makes): as confident as the good
    one and wrong on nearly every input, its own golden outputs still reproduce."""
    directory.mkdir(parents=True, exist_ok=True)
    classifier = _train_digits_classifier().classifier
    shift = np.roll(np.arange(classifier.coefs_[-1].shape[1]), 1)
    classifier.coefs_[-1] = classifier.coefs_[-1][:, shift]
    classifier.intercepts_[-1] = classifier.intercepts_[-1][shift]
    model = directory / "digits-mislabeled.onnx"
    _save_onnx(classifier, model)
    return model


def build_demo_models(directory: Path) -> DemoModels:
    directory.mkdir(parents=True, exist_ok=True)
    trained = _train_digits_classifier()
    classifier = trained.classifier
    good = directory / "digits.onnx"
    _save_onnx(classifier, good)
    accuracy = float(classifier.score(trained.x_test, trained.y_test))

    classifier.coefs_[-1] *= DEGRADED_OUTPUT_SCALE
    classifier.intercepts_[-1] *= DEGRADED_OUTPUT_SCALE
    degraded = directory / "digits-degraded.onnx"
    _save_onnx(classifier, degraded)
    degraded_accuracy = float(classifier.score(trained.x_test, trained.y_test))

    validation = _save_validation(trained, directory)
    lite_trained = _train_digits_classifier(LITE_HIDDEN_UNITS)
    lite = directory / "digits-lite.onnx"
    _save_onnx(lite_trained.classifier, lite)
    lite_accuracy = float(lite_trained.classifier.score(trained.x_test, trained.y_test))
    return DemoModels(good, degraded, validation, accuracy, degraded_accuracy, lite, lite_accuracy)


def _save_onnx(classifier: object, path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    model = to_onnx(
        classifier,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    path.write_bytes(model.SerializeToString())
