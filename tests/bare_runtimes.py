"""The runtimes without edgefleet: what the backends and the agent's outputs must equal.

Configured as the backends configure them (one intra-op thread), so the arithmetic is the
same and comparisons can be exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter

Array = npt.NDArray[Any]


def bare_onnx(path: Path, feeds: dict[str, Array], *, optimize: bool = True) -> dict[str, Array]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


def bare_litert(path: Path, x: Array) -> Array:
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def assert_same(actual: dict[str, Array], expected: dict[str, Array]) -> None:
    """Same names, dtypes, shapes and values, bit for bit."""
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        assert actual[name].shape == value.shape, name
        assert np.array_equal(actual[name], value), name
