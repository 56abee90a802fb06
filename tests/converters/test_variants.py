"""``variant``: each mode on the digits MLP, the gate's verdicts, and refusals."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from converters import (
    BadValidationSetError,
    ConversionFailedError,
    GatePolicy,
    UnsupportedFormatError,
    inspect_model,
    make_variant,
)


def test_int8_dynamic_is_accepted_and_smaller(
    digits_model: Path, digits_validation: Path, tmp_path: Path
) -> None:
    output = tmp_path / "digits-int8.onnx"
    result = make_variant("int8-dynamic", digits_model, output, digits_validation)
    assert result.status == "accepted", result.decision.reasons
    assert result.report.size_bytes_candidate < result.report.size_bytes_parent
    assert result.report.size_bytes_candidate == output.stat().st_size
    assert result.report.reference == "labels"
    assert result.report.accuracy_drop_points is not None
    assert result.report.accuracy_drop_points <= 1.0
    ops = {node.op_type for node in onnx.load(output).graph.node}
    assert "MatMulInteger" in ops
    assert "MatMul" not in ops
    assert "MatMul" not in result.fp32_op_types


def test_int8_static_is_accepted_with_qdq_nodes(
    digits_model: Path, digits_validation: Path, tmp_path: Path
) -> None:
    output = tmp_path / "digits-qdq.onnx"
    result = make_variant("int8-static", digits_model, output, digits_validation)
    assert result.status == "accepted", result.decision.reasons
    ops = [node.op_type for node in onnx.load(output).graph.node]
    assert "QuantizeLinear" in ops
    assert "DequantizeLinear" in ops
    assert any("calibrated" in note for note in result.notes)


def test_int8_static_without_validation_set_is_refused(digits_model: Path, tmp_path: Path) -> None:
    output = tmp_path / "never.onnx"
    with pytest.raises(BadValidationSetError, match="calibrates"):
        make_variant("int8-static", digits_model, output)
    assert not output.exists()


def test_fp16_is_accepted_with_half_precision_weights(
    digits_model: Path, digits_validation: Path, tmp_path: Path
) -> None:
    output = tmp_path / "digits-fp16.onnx"
    result = make_variant("fp16", digits_model, output, digits_validation)
    assert result.status == "accepted", result.decision.reasons
    weights = [t for t in onnx.load(output).graph.initializer if len(t.dims) == 2]
    assert weights
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert inspect_model(output).inputs == inspect_model(digits_model).inputs


def test_unattainable_agreement_rejects_but_still_writes_a_loadable_variant(
    digits_model: Path, digits_validation: Path, tmp_path: Path
) -> None:
    output = tmp_path / "digits-int8.onnx"
    policy = GatePolicy(min_top1_agreement=1.01)
    result = make_variant("int8-dynamic", digits_model, output, digits_validation, policy=policy)
    assert result.status == "rejected"
    assert len(result.decision.reasons) == 1
    assert "below the required 1.01" in result.decision.reasons[0]
    assert inspect_model(output).format == "onnx"


def test_tight_max_abs_error_rejects_with_the_measured_number(
    digits_model: Path, digits_validation: Path, tmp_path: Path
) -> None:
    policy = GatePolicy(max_abs_error=1e-9)
    result = make_variant(
        "int8-dynamic", digits_model, tmp_path / "v.onnx", digits_validation, policy=policy
    )
    assert result.status == "rejected"
    assert result.report.max_abs_error is not None
    assert f"{result.report.max_abs_error:.6g}" in result.decision.reasons[0]


def test_without_validation_set_random_inputs_are_compared_and_noted(
    cnn_model: Path, tmp_path: Path
) -> None:
    result = make_variant("int8-dynamic", cnn_model, tmp_path / "cnn-int8.onnx", seed=3)
    assert result.report.reference == "parent"
    assert result.report.accuracy_parent is None
    assert result.report.top1_agreement is not None
    assert any("seeded random inputs (seed 3)" in note for note in result.to_json_obj()["notes"])


def test_cnn_static_quantization_calibrates_on_images(cnn_model: Path, tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    validation = tmp_path / "images.npz"
    np.savez(validation, input=rng.random((64, 1, 8, 8), dtype=np.float32))
    result = make_variant("int8-static", cnn_model, tmp_path / "cnn-qdq.onnx", validation)
    assert result.report.samples == 64
    assert result.report.reference == "parent"
    assert "Conv" not in result.fp32_op_types


def test_onnx_mode_on_a_tflite_model_is_unsupported(tflite_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="needs a onnx model"):
        make_variant("fp16", tflite_model, tmp_path / "x.onnx")


def test_tflite_mode_on_an_onnx_model_is_unsupported(digits_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="needs a tflite model"):
        make_variant("tflite-int8-dynamic", digits_model, tmp_path / "x.tflite")


def test_a_broken_parent_is_refused_before_any_conversion(
    broken: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "never.onnx"
    with pytest.raises(Exception, match="external data") as refused:
        make_variant("int8-dynamic", broken["external_parent"], output)
    assert getattr(refused.value, "kind", None) == "external_data_escape"
    assert not output.exists()


def test_a_variant_never_overwrites_its_parent(digits_model: Path) -> None:
    before = digits_model.read_bytes()
    with pytest.raises(ConversionFailedError, match="overwrite its parent"):
        make_variant("int8-dynamic", digits_model, digits_model)
    assert digits_model.read_bytes() == before
