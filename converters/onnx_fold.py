"""Fold weights a graph builds at run time into initializers, so quantizers can see them.

Some ONNX graphs make their weights when they run: the onnx package's reference CNNs
(SqueezeNet, ResNet-50, Inception…) fill every weight with ``ConstantOfShape``. Quantizers
only quantize initializers, and refuse such graphs ("Expected conv1_w_0 to be an
initializer"). ONNX Runtime's basic graph optimizations fold constant subgraphs into
initializers without changing the model's arithmetic (constant folding, redundant node
elimination; no hardware-specific fusion, which only the extended levels do), and write
the folded graph with ``optimized_model_filepath``.

Old graphs (IR version 3) list initializers and the shapes their builders took as graph
inputs; after folding those inputs feed nothing, and a quantizer would ask for them, so
inputs that are initializers or feed no node are dropped, and the IR version is raised
to 4, the first where initializers need not be inputs.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from .errors import ConversionFailedError

__all__ = ["RUN_TIME_WEIGHT_OPS", "builds_weights_at_run_time", "fold_constants"]

# Ops that make tensors from nothing but attributes and shapes: weights built at run time.
RUN_TIME_WEIGHT_OPS = frozenset({"ConstantOfShape", "RandomNormal", "RandomUniform"})
INITIALIZERS_NEED_NOT_BE_INPUTS_IR = 4


def builds_weights_at_run_time(model: onnx.ModelProto) -> bool:
    return any(node.op_type in RUN_TIME_WEIGHT_OPS for node in model.graph.node)


def fold_constants(parent: Path, output: Path) -> int:
    """Write ``parent`` with constant subgraphs folded to ``output``; returns nodes removed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(output)
    try:
        ort.InferenceSession(str(parent), options, providers=["CPUExecutionProvider"])
        folded = onnx.load(output)
    except Exception as exc:  # onnxruntime raises untyped errors
        raise ConversionFailedError(f"folding run-time weights failed: {exc}") from exc
    graph = folded.graph
    initializers = {tensor.name for tensor in graph.initializer}
    consumed = {name for node in graph.node for name in node.input}
    consumed |= {value.name for value in graph.output}
    kept = [v for v in graph.input if v.name not in initializers and v.name in consumed]
    del graph.input[:]
    graph.input.extend(kept)
    folded.ir_version = max(folded.ir_version, INITIALIZERS_NEED_NOT_BE_INPUTS_IR)
    onnx.save(folded, output)
    return len(onnx.load(parent, load_external_data=False).graph.node) - len(graph.node)
