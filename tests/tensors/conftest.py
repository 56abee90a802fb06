"""Real models for the tensors tests, built once per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from simulator.demo_models import build_digits_model
from tests.model_factory import onnx_reference_models, tiny_tflite

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Models:
    digits: Path
    digits_inputs: Array
    squeezenet: Path
    tflite: Path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    directory = tmp_path_factory.mktemp("tensors-models")
    digits, npz = build_digits_model(directory)
    (squeezenet,) = [path for path in onnx_reference_models() if path.stem == "light_squeezenet"]
    return Models(
        digits=digits,
        digits_inputs=np.load(npz)["input"][:5],
        squeezenet=squeezenet,
        tflite=tiny_tflite(directory),
    )
