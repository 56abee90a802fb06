"""``profile``: golden cases a re-run reproduces, and a reference profile that validates."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from converters import TOLERANCES, profile_model
from protocol import GoldenCase, ReferenceProfile
from tensors.profile import histogram
from tests.model_factory import onnx_reference_models

NUMPY_OF = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32}


def decode(tensor: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(tensor["data"])
    dtype = np.dtype(NUMPY_OF[tensor["datatype"]]).newbyteorder("<")
    return np.frombuffer(raw, dtype=dtype).reshape(tensor["shape"])


def rerun_onnx(model: Path, case: dict[str, Any]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {t["name"]: decode(t) for t in case["inputs"]}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def assert_reproduced(case: dict[str, Any], actual: dict[str, np.ndarray]) -> None:
    for expected in case["expected_outputs"]:
        np.testing.assert_allclose(
            actual[expected["name"]], decode(expected), atol=case["atol"], rtol=case["rtol"]
        )


def test_digits_golden_cases_are_reproduced_by_a_fresh_session(
    digits_model: Path, digits_validation: Path
) -> None:
    result = profile_model(digits_model, digits_validation, golden_count=4)
    assert result["golden_source"] == "validation"
    assert len(result["golden"]) == 4
    held_out = np.load(digits_validation)["input"]
    for case in result["golden"]:
        GoldenCase.model_validate(case)
        (tensor,) = case["inputs"]
        assert tensor["shape"] == [1, 64]
        assert any(np.array_equal(decode(tensor)[0], row) for row in held_out)
        assert (case["atol"], case["rtol"]) == TOLERANCES["fp32"]
        assert_reproduced(case, rerun_onnx(digits_model, case))


def test_digits_reference_profile_describes_a_classifier(
    digits_model: Path, digits_validation: Path
) -> None:
    profile = profile_model(digits_model, digits_validation)["reference_profile"]
    ReferenceProfile.model_validate(profile)
    assert set(profile["inputs"]) == {"input"}
    assert set(profile["outputs"]) == {"label", "probabilities"}
    for hist in [*profile["inputs"].values(), *profile["outputs"].values()]:
        assert len(hist["bin_edges"]) == len(hist["fractions"]) + 1
        assert all(b > a for a, b in zip(hist["bin_edges"], hist["bin_edges"][1:], strict=False))
        assert sum(hist["fractions"]) == pytest.approx(1.0)
    assert 0.5 < profile["top1_confidence_mean"] <= 1.0
    assert len(profile["class_distribution"]) == 10
    assert sum(profile["class_distribution"]) == pytest.approx(1.0)


def test_without_validation_set_golden_inputs_are_generated_and_recorded(cnn_model: Path) -> None:
    result = profile_model(cnn_model, golden_count=2, seed=1)
    assert result["golden_source"] == "generated"
    assert len(result["golden"]) == 2
    for case in result["golden"]:
        assert case["inputs"][0]["shape"] == [1, 1, 8, 8]
        assert_reproduced(case, rerun_onnx(cnn_model, case))
    profile = result["reference_profile"]
    assert profile["inputs"] == {}  # image input: no tabular histogram
    assert profile["class_distribution"] is not None


def test_same_seed_gives_the_same_golden_data(cnn_model: Path) -> None:
    assert profile_model(cnn_model, seed=4) == profile_model(cnn_model, seed=4)
    assert profile_model(cnn_model, seed=4) != profile_model(cnn_model, seed=5)


def test_int8_variant_gets_wider_tolerances(
    digits_model: Path, digits_validation: Path, tmp_path: Path
) -> None:
    from converters import make_variant

    variant = tmp_path / "digits-int8.onnx"
    make_variant("int8-dynamic", digits_model, variant, digits_validation)
    result = profile_model(variant, digits_validation, golden_count=1)
    assert (result["golden"][0]["atol"], result["golden"][0]["rtol"]) == TOLERANCES["int8"]


def test_tflite_golden_cases_are_reproduced_by_litert(tflite_model: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    result = profile_model(tflite_model, golden_count=3)
    assert len(result["golden"]) == 3
    interpreter = Interpreter(model_path=str(tflite_model))
    interpreter.allocate_tensors()
    for case in result["golden"]:
        interpreter.set_tensor(
            interpreter.get_input_details()[0]["index"], decode(case["inputs"][0])
        )
        interpreter.invoke()
        output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        assert_reproduced(case, {"probabilities": output})


def test_a_fixed_batch_reference_model_profiles_single_images() -> None:
    squeezenet = next(p for p in onnx_reference_models() if p.stem == "light_squeezenet")
    result = profile_model(squeezenet, golden_count=1)
    (case,) = result["golden"]
    assert case["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert_reproduced(case, rerun_onnx(squeezenet, case))


@pytest.mark.parametrize(
    "values", [np.zeros(10), np.full(5, 7.0), np.array([1.0, 1.0 + 1e-12]), np.arange(100.0)]
)
def test_histogram_edges_always_increase(values: np.ndarray) -> None:
    hist = histogram(values)
    assert hist is not None
    assert all(b > a for a, b in zip(hist["bin_edges"], hist["bin_edges"][1:], strict=False))
    assert sum(hist["fractions"]) == pytest.approx(1.0)


def test_histogram_of_nothing_finite_is_none() -> None:
    assert histogram(np.array([np.nan, np.inf])) is None
