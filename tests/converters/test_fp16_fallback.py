"""FP16 conversions that break, and the retries that keep the culprit op type in FP32."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnxconverter_common import float16

from converters import MalformedModelError, evaluate, inspect_model, make_variant
from converters.fp16 import replace_noop_casts


def test_plain_fp16_of_integer_features_does_not_load(counts_model: Path, tmp_path: Path) -> None:
    plain = float16.convert_float_to_float16(onnx.load(counts_model), keep_io_types=True)
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(MalformedModelError, match="op_type:Cast"):
        inspect_model(tmp_path / "plain.onnx")


def test_fp16_keeps_the_op_that_breaks_loading_in_fp32(counts_model: Path, tmp_path: Path) -> None:
    output = tmp_path / "counts-fp16.onnx"
    result = make_variant("fp16", counts_model, output)
    assert result.fp32_op_types == ["Cast"]
    assert any("Cast failed to load; kept in FP32" in note for note in result.notes)
    assert result.status == "accepted", result.decision.reasons
    assert inspect_model(output).inputs[0].datatype == "INT64"
    weights = next(t for t in onnx.load(output).graph.initializer if t.name == "weights")
    assert weights.data_type == onnx.TensorProto.FLOAT16


def test_plain_fp16_of_large_readings_loses_the_classes(
    pressure: tuple[Path, Path], tmp_path: Path
) -> None:
    model, validation = pressure
    plain = float16.convert_float_to_float16(onnx.load(model), keep_io_types=True)
    onnx.save(plain, tmp_path / "plain.onnx")
    report = evaluate(model, tmp_path / "plain.onnx", validation)
    assert report.top1_agreement is not None
    assert report.top1_agreement < 0.5


def test_fp16_keeps_the_op_whose_output_diverges_in_fp32(
    pressure: tuple[Path, Path], tmp_path: Path
) -> None:
    model, validation = pressure
    output = tmp_path / "pressure-fp16.onnx"
    result = make_variant("fp16", model, output, validation)
    assert result.status == "accepted", result.decision.reasons
    assert "Sub" in result.fp32_op_types
    assert any("'centred' of Sub diverges" in note for note in result.notes)
    assert result.report.nonfinite_outputs == 0
    assert result.report.accuracy_drop_points == pytest.approx(0.0, abs=1.0)
    matmul_weights = next(t for t in onnx.load(output).graph.initializer if t.name == "weights")
    assert matmul_weights.data_type == onnx.TensorProto.FLOAT16


def test_noop_casts_become_identity_and_real_casts_stay(
    digits_model: Path, counts_model: Path
) -> None:
    digits = onnx.load(digits_model)
    assert replace_noop_casts(digits) == 1
    assert digits.graph.node[0].op_type == "Identity"
    counts = onnx.load(counts_model)
    assert replace_noop_casts(counts) == 0
    assert counts.graph.node[0].op_type == "Cast"
