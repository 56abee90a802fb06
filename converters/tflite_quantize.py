"""Dynamic-range INT8 variants of TFLite models with LiteRT Quantizer (no TensorFlow).

The recipe ``dynamic_wi8_afp32`` stores weights as INT8 (per channel, symmetric) and
keeps activations in FP32; kernels quantize activations on the fly. The quantizer prints
a summary to stdout; the command line keeps stdout for its JSON (see ``cli``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .errors import ConversionFailedError, MalformedModelError, MissingDependencyError
from .onnx_quantize import staged_output

__all__ = ["fp32_op_types_tflite", "quantize_tflite_int8_dynamic"]

logger = logging.getLogger(__name__)


def quantize_tflite_int8_dynamic(parent: Path, output: Path) -> None:
    """Write the dynamic-range INT8 variant of ``parent`` to ``output``."""
    try:
        from litert_quantizer import quantizer, recipe
    except ImportError as exc:
        raise MissingDependencyError(
            "tflite-int8-dynamic needs litert-quantizer: pip install 'edgefleet[convert]'"
        ) from exc
    with staged_output(output) as staged:
        try:
            engine = quantizer.Quantizer(str(parent))
            engine.load_quantization_recipe(recipe.dynamic_wi8_afp32())
            result = engine.quantize()
            staged.unlink()
            result.export_model(str(staged), overwrite=True)
        except Exception as exc:
            raise ConversionFailedError(f"LiteRT dynamic-range quantization failed: {exc}") from exc


def _operator_names() -> dict[int, str]:
    from ai_edge_litert.schema_py_generated import BuiltinOperator

    return {value: name for name, value in vars(BuiltinOperator).items() if isinstance(value, int)}


def fp32_op_types_tflite(path: Path) -> list[str]:
    """Builtin operators none of whose inputs is an INT8 tensor: they still run in float."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        model: Any = schema.Model.GetRootAs(path.read_bytes(), 0)
        names = _operator_names()
        codes = [
            max(
                model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode()
            )
            for i in range(model.OperatorCodesLength())
        ]
        found: set[str] = set()
        for s in range(model.SubgraphsLength()):
            subgraph = model.Subgraphs(s)
            for o in range(subgraph.OperatorsLength()):
                operator = subgraph.Operators(o)
                inputs = [operator.Inputs(i) for i in range(operator.InputsLength())]
                types = {subgraph.Tensors(t).Type() for t in inputs if t >= 0}
                if schema.TensorType.INT8 not in types:
                    found.add(names.get(codes[operator.OpcodeIndex()], "CUSTOM"))
    except (ValueError, IndexError, TypeError, OSError) as exc:
        raise MalformedModelError(f"cannot read the operators of {path.name}: {exc}") from exc
    return sorted(found)
