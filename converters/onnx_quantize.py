"""INT8 variants of ONNX models with onnxruntime's quantizer, and what stayed in float.

Dynamic quantization stores weights as INT8 and quantizes activations at run time; static
quantization (QDQ format) also fixes activation ranges from calibration batches taken
from the validation set. Both write the variant to a temporary file and move it into
place only when the quantizer finished, so a failed run never leaves half a model.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import onnx
from onnx import ModelProto

from tensors import Array

from .errors import ConversionFailedError
from .validation import ValidationSet, batch_size_of, iter_batches

__all__ = [
    "CALIBRATION_SAMPLES",
    "fp32_op_types_onnx",
    "quantize_int8_dynamic",
    "quantize_int8_static",
    "staged_output",
]

logger = logging.getLogger(__name__)

CALIBRATION_SAMPLES = 256
PER_CHANNEL_MIN_OPSET = 13  # DequantizeLinear takes an axis from opset 13 on

QUANTIZATION_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QAttention",
})  # fmt: skip
# Ops that move or relabel data without arithmetic; listing them as "FP32" would mislead.
DATA_MOVEMENT_OPS = frozenset({
    "Cast", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
    "Shape", "Concat", "Gather", "Slice", "Split", "Expand", "Tile", "Pad",
    "ArrayFeatureExtractor", "Constant", "ConstantOfShape", "Dropout",
})  # fmt: skip


@contextmanager
def staged_output(output: Path) -> Iterator[Path]:
    """A temporary path beside ``output``, moved onto it only if the block succeeds."""
    output.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staged = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(descriptor)
    try:
        yield Path(staged)
        os.replace(staged, output)
    finally:
        if os.path.exists(staged):
            os.unlink(staged)


def quantize_int8_dynamic(parent: Path, output: Path) -> None:
    """INT8 weights, activations quantized at run time (``quantize_dynamic``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with staged_output(output) as staged:
        try:
            quantize_dynamic(parent, staged, weight_type=QuantType.QInt8)
        except Exception as exc:
            raise ConversionFailedError(f"dynamic INT8 quantization failed: {exc}") from exc


def _calibration_batches(data: ValidationSet, inputs: Any) -> list[dict[str, Array]]:
    batches: list[dict[str, Array]] = []
    taken = 0
    for batch in iter_batches(data.inputs, batch_size_of(inputs)):
        batches.append(batch)
        taken += int(next(iter(batch.values())).shape[0])
        if taken >= CALIBRATION_SAMPLES:
            break
    return batches


def quantize_int8_static(parent: Path, output: Path, data: ValidationSet, inputs: Any) -> int:
    """INT8 weights and activations in QDQ format, calibrated on ``data``; returns samples used."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    batches = _calibration_batches(data, inputs)

    class _BatchReader(CalibrationDataReader):  # type: ignore[misc] # untyped base
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, Array] | None:
            return next(self._batches, None)

    opset = next(
        (
            o.version
            for o in onnx.load(parent, load_external_data=False).opset_import
            if o.domain in {"", "ai.onnx"}
        ),
        0,
    )
    with staged_output(output) as staged:
        try:
            quantize_static(
                parent,
                staged,
                _BatchReader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=opset >= PER_CHANNEL_MIN_OPSET,
            )
        except Exception as exc:
            raise ConversionFailedError(f"static INT8 quantization failed: {exc}") from exc
    return sum(int(next(iter(b.values())).shape[0]) for b in batches)


def fp32_op_types_onnx(model: ModelProto, *, blocked: frozenset[str] = frozenset()) -> list[str]:
    """Op types that still compute in float in a variant.

    For INT8 variants: nodes other than quantization ops whose data inputs do not all come
    from a DequantizeLinear (QDQ pairs run as integer kernels). For FP16 variants, pass
    the op types kept in FP32 as ``blocked``. Data-movement ops are left out.
    """
    dequantized = {
        out
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        for out in node.output
    }
    initializers = {tensor.name for tensor in model.graph.initializer}
    found: set[str] = set()
    for node in model.graph.node:
        if node.op_type in QUANTIZATION_OPS or node.op_type in DATA_MOVEMENT_OPS:
            continue
        if blocked:
            if node.op_type in blocked:
                found.add(node.op_type)
            continue
        data_inputs = [name for name in node.input if name and name not in initializers]
        if not data_inputs or not all(name in dequantized for name in data_inputs):
            found.add(node.op_type)
    return sorted(found)
