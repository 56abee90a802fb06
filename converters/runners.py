"""One small interface to run a model, with an ONNX Runtime and a LiteRT implementation.

Runners only run models that ``inspection`` already checked. Their errors are translated
here, once: a runtime that refuses to load is ``MalformedModelError``, a missing LiteRT
is ``MissingDependencyError``. LiteRT is imported lazily so ONNX-only installs work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import (
    MalformedModelError,
    MissingDependencyError,
    TensorTooLargeError,
    UnsupportedDatatypeError,
)
from .tensors import Array, TensorSpec, datatype_of_numpy, declared_bytes

__all__ = ["InferenceRunner", "LiteRtRunner", "OnnxRuntimeRunner", "load_interpreter_class"]

# Evaluation and profiling run single-threaded: timings are steadier, like small devices.
EVAL_THREADS = 1
_ORT_LOG_ERRORS_ONLY = 3

_ORT_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


class InferenceRunner(Protocol):
    """A loaded model: its signature, and a function from named inputs to named outputs."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]: ...


def _ort_spec(arg: Any) -> TensorSpec:
    datatype = _ORT_DATATYPES.get(arg.type)
    if datatype is None:
        raise UnsupportedDatatypeError(
            f"{arg.name!r} is of type {arg.type}, not a tensor of an OIP datatype"
        )
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape or [])
    return TensorSpec(arg.name, datatype, shape)


class OnnxRuntimeRunner:
    """An onnxruntime CPU session, created from the file path so external data resolves."""

    def __init__(self, path: Path, *, threads: int = EVAL_THREADS, optimize: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = _ORT_LOG_ERRORS_ONLY
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self._session = ort.InferenceSession(
                os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise MalformedModelError(f"onnxruntime cannot load {path.name}: {exc}") from exc
        self._inputs = tuple(_ort_spec(arg) for arg in self._session.get_inputs())
        self._outputs = tuple(_ort_spec(arg) for arg in self._session.get_outputs())

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        try:
            values = self._session.run(None, dict(feeds))
        except Exception as exc:
            raise MalformedModelError(f"onnxruntime failed to run the model: {exc}") from exc
        return {
            spec.name: np.asarray(value) for spec, value in zip(self._outputs, values, strict=True)
        }


def load_interpreter_class() -> Any:
    """LiteRT's ``Interpreter``, falling back to ``tflite_runtime``."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise MissingDependencyError(
                "a TFLite model needs ai-edge-litert (or tflite-runtime): "
                "pip install 'edgefleet[tflite]'"
            ) from exc
    return Interpreter


def _details_spec(detail: Mapping[str, Any]) -> TensorSpec:
    name = str(detail["name"])
    signature = detail.get("shape_signature")
    shape = signature if signature is not None and len(signature) else detail["shape"]
    return TensorSpec(
        name,
        datatype_of_numpy(detail["dtype"], name=name),
        tuple(int(dim) if dim >= 0 else -1 for dim in shape),
    )


class LiteRtRunner:
    """A LiteRT interpreter; inputs with a free batch dimension are resized per call."""

    def __init__(
        self, path: Path, *, threads: int = EVAL_THREADS, max_tensor_bytes: int | None = None
    ) -> None:
        interpreter_class = load_interpreter_class()
        try:
            self._interpreter = interpreter_class(model_path=os.fspath(path), num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise MalformedModelError(f"LiteRT cannot read {path.name}: {exc}") from exc
        if max_tensor_bytes is not None:
            self._verify_tensor_sizes(max_tensor_bytes)
        try:
            self._interpreter.allocate_tensors()
            input_details = self._interpreter.get_input_details()
            output_details = self._interpreter.get_output_details()
        except (ValueError, RuntimeError) as exc:
            raise MalformedModelError(f"LiteRT cannot load {path.name}: {exc}") from exc
        self._input_index = {str(d["name"]): int(d["index"]) for d in input_details}
        self._output_index = {str(d["name"]): int(d["index"]) for d in output_details}
        self._inputs = tuple(_details_spec(d) for d in input_details)
        self._outputs = tuple(_details_spec(d) for d in output_details)

    def _verify_tensor_sizes(self, max_tensor_bytes: int) -> None:
        try:
            details = self._interpreter.get_tensor_details()
        except (ValueError, RuntimeError) as exc:
            raise MalformedModelError(f"LiteRT cannot list the tensors: {exc}") from exc
        for detail in details:
            size = declared_bytes(
                [int(d) for d in detail["shape"]], np.dtype(detail["dtype"]).itemsize
            )
            if size > max_tensor_bytes:
                raise TensorTooLargeError(
                    f"tensor {detail['name']!r} declares {list(detail['shape'])}: {size} bytes, "
                    f"above the limit of {max_tensor_bytes}"
                )

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        interpreter = self._interpreter
        try:
            resized = False
            for detail in interpreter.get_input_details():
                value = feeds[str(detail["name"])]
                if tuple(detail["shape"]) != value.shape:
                    interpreter.resize_tensor_input(int(detail["index"]), list(value.shape))
                    resized = True
            if resized:
                interpreter.allocate_tensors()
            for name, index in self._input_index.items():
                interpreter.set_tensor(index, feeds[name])
            interpreter.invoke()
            return {
                name: np.array(interpreter.get_tensor(index))
                for name, index in self._output_index.items()
            }
        except (ValueError, RuntimeError) as exc:
            raise MalformedModelError(f"LiteRT failed to run the model: {exc}") from exc
