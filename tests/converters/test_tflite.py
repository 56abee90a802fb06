"""Dynamic-range INT8 for TFLite with LiteRT Quantizer, evaluated with LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters import evaluate, inspect_model, make_variant


def _weight_types(path: Path) -> dict[str, str]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return {d["name"]: np.dtype(d["dtype"]).name for d in interpreter.get_tensor_details()}


def test_tflite_int8_dynamic_quantizes_weights_and_is_accepted(
    tflite_model: Path, tmp_path: Path
) -> None:
    output = tmp_path / "tiny-int8.tflite"
    result = make_variant("tflite-int8-dynamic", tflite_model, output)
    assert result.status == "accepted", result.decision.reasons
    assert result.report.size_ratio < 0.5
    types = _weight_types(output)
    assert types["w1"] == "int8"
    assert types["w2"] == "int8"
    assert types["input"] == "float32"
    assert result.fp32_op_types == ["SOFTMAX"]
    assert inspect_model(output).outputs == inspect_model(tflite_model).outputs


def test_tflite_evaluation_with_labels_measures_accuracy(
    tflite_model: Path, tmp_path: Path
) -> None:
    output = tmp_path / "tiny-int8.tflite"
    make_variant("tflite-int8-dynamic", tflite_model, output)
    rng = np.random.default_rng(7)
    validation = tmp_path / "v.npz"
    np.savez(validation, input=rng.standard_normal((40, 64)).astype(np.float32),
             labels=rng.integers(0, 10, 40))  # fmt: skip
    report = evaluate(tflite_model, output, validation)
    assert report.samples == 40
    assert report.reference == "labels"
    assert report.accuracy_parent is not None
    assert report.accuracy_drop_points == pytest.approx(
        (report.accuracy_parent - (report.accuracy_candidate or 0.0)) * 100
    )
