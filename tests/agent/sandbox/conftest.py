"""Real models for the sandboxed check, and releases that describe them.

Golden outputs are computed with the runtime itself, here in the test, then written to a
check bundle beside the model, named by its hash, as the release names it. Hand-made ONNX
models cover what a trained model would not do on demand: NaN, slowness, endless loops,
memory hogs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.update.sandbox import SandboxLimits
from protocol import Artifact, ReferenceProfile, Release, RuntimeRequirements, TensorSpec
from simulator.demo_models import build_digits_model
from tensors import GoldenCase
from tests.check_bundles import write_bundle
from tests.factories import make_release
from tests.model_factory import IR_VERSION, OPSET, tiny_tflite

Array = npt.NDArray[Any]

# Generous enough for onnxruntime and a small model; each test that tests a limit sets its own.
LIMITS = SandboxLimits(memory_bytes=1 << 30, cpu_s=30, wall_s=60.0)


def release_for(
    model_path: Path,
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    golden: Sequence[GoldenCase] = (),
    reference_profile: ReferenceProfile | None = None,
    model_format: str = "onnx",
) -> Release:
    """A release of ``model_path`` with a check bundle written beside it (``bundle_of``)."""
    data = model_path.read_bytes()
    return make_release(
        artifact=Artifact(
            sha256=hashlib.sha256(data).hexdigest(),
            length=len(data),
            format=model_format,
            filename=model_path.name,
        ),
        runtime=RuntimeRequirements(name="onnxruntime" if model_format == "onnx" else "litert"),
        inputs=list(inputs),
        outputs=list(outputs),
        check_bundle=write_bundle(model_path.parent, golden, reference_profile),
    )


def save_onnx(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def fp32(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


@dataclass(frozen=True)
class Digits:
    """The digits MLP, a few held-out inputs, and its own outputs on them."""

    path: Path
    inputs: Array
    label: Array
    probabilities: Array

    def golden(self, probabilities: Array | None = None) -> GoldenCase:
        return GoldenCase(
            inputs={"input": self.inputs},
            expected_outputs={
                "label": self.label,
                "probabilities": self.probabilities if probabilities is None else probabilities,
            },
        )

    def release(self, **overrides: Any) -> Release:
        fields: dict[str, Any] = {
            "inputs": [TensorSpec(name="input", datatype="FP32", shape=[-1, 64])],
            "outputs": [
                TensorSpec(name="label", datatype="INT64", shape=[-1]),
                TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 10]),
            ],
            "golden": [self.golden()],
        }
        fields.update(overrides)
        return release_for(self.path, **fields)


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    import onnxruntime as ort

    path, npz = build_digits_model(tmp_path_factory.mktemp("digits"))
    inputs = np.load(npz)["input"][:4]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label, probabilities = session.run(None, {"input": inputs})
    return Digits(path, inputs, label, probabilities)


@pytest.fixture(scope="session")
def tflite_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Release]:
    from ai_edge_litert.interpreter import Interpreter

    path = tiny_tflite(tmp_path_factory.mktemp("tflite"))
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    y = np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    release = release_for(
        path,
        model_format="tflite",
        inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 64])],
        outputs=[TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 10])],
        golden=[GoldenCase(inputs={"input": x}, expected_outputs={"probabilities": y})],
    )
    return path, release


def log_model(directory: Path) -> Path:
    """y = log(x): NaN for a negative input, -inf for zero."""
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["y"])], "log", [fp32("x", [1, 4])], [fp32("y", [1, 4])]
    )
    return save_onnx(graph, directory / "log.onnx")


def matmul_loop_model(directory: Path, *, iterations: int, name: str) -> Path:
    """x [256, 512] -> ``iterations`` times x = tanh(x @ w): about 67 MFLOP a turn."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((512, 512)) / np.sqrt(512)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["x_in", "w"], ["product"]),
            helper.make_node("Tanh", ["product"], ["x_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            fp32("x_in", [256, 512]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            fp32("x_out", [256, 512]),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], body=body)],
        name,
        [fp32("x", [256, 512])],
        [fp32("y", [256, 512])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array(iterations, dtype=np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "keep_going"),
        ],
    )
    return save_onnx(graph, directory / f"{name}.onnx")


def memory_hog_model(directory: Path) -> Path:
    """A tensor of ones of the shape it is given, summed: memory on demand, at run time."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["ones"],
                value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
            ),
            helper.make_node("ReduceSum", ["ones"], ["total"], keepdims=0),
        ],
        "hog",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [fp32("total", [])],
    )
    return save_onnx(graph, directory / "hog.onnx")
