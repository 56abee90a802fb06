"""Small ONNX models for the update path, with releases whose golden cases fit them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from protocol import Release, TensorSpec
from tensors import GoldenCase
from tests.agent.e2e.double import ControllerDouble

OPSET = 17
WIDTH = 4
SLOW_WIDTH = 512
SLOW_LAYERS = 60


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def affine_model(path: Path, bias: float) -> Path:
    """y = x + bias, x and y FP32 [-1, 4]: different biases, different artifacts."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "b"], ["y"])],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])],
        [numpy_helper.from_array(np.full((WIDTH,), bias, dtype=np.float32), "b")],
    )
    return _save(graph, path)


def nan_model(path: Path) -> Path:
    """y = log(x - 100): NaN for every reasonable input."""
    graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "c"], ["t"]), helper.make_node("Log", ["t"], ["y"])],
        "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])],
        [numpy_helper.from_array(np.full((WIDTH,), 100.0, dtype=np.float32), "c")],
    )
    return _save(graph, path)


def log1p_model(path: Path) -> Path:
    """y = log(x + 1): finite on the golden inputs (0..7), NaN for live inputs below -1."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["t"]), helper.make_node("Log", ["t"], ["y"])],
        "log1p",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])],
        [numpy_helper.from_array(np.ones((WIDTH,), dtype=np.float32), "one")],
    )
    return _save(graph, path)


def slow_model(path: Path) -> Path:
    """A chain of 512x512 MatMuls: milliseconds per inference, same I/O as the others."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["h0"])]
    inits = [
        numpy_helper.from_array(np.array([0, 0, 0, SLOW_WIDTH - WIDTH], dtype=np.int64), "pads")
    ]
    for i in range(SLOW_LAYERS):
        weight = (rng.standard_normal((SLOW_WIDTH, SLOW_WIDTH)) / SLOW_WIDTH).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("Slice", [f"h{SLOW_LAYERS}", "starts", "ends", "axes"], ["y"]))
    inits += [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([WIDTH], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])],
        inits,
    )
    return _save(graph, path)


def release_of(
    double: ControllerDouble,
    model: Path,
    *,
    version: int,
    expected: np.ndarray[Any, Any] | None = None,
    name: str = "affine",
    **overrides: Any,
) -> Release:
    """A release of ``model`` whose golden case is the model's own output (or ``expected``)."""
    x = np.arange(2 * WIDTH, dtype=np.float32).reshape(2, WIDTH)
    if expected is None:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        expected = session.run(None, {"x": x})[0]
    return double.release_for(
        model,
        model=name,
        version=version,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, WIDTH])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, WIDTH])],
        golden=[GoldenCase(inputs={"x": x}, expected_outputs={"y": expected.astype(np.float32)})],
        **overrides,
    )
