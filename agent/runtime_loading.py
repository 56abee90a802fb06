"""Load a model file into ONNX Runtime or LiteRT, read its I/O signature, run it.

Only code that already runs under sandbox limits calls ``load_model`` on a model that
has not passed the sandboxed check (ARCHITECTURE.md §3). Runtime exceptions are
translated here, once: a runtime that refuses to load or to run a model is
``ModelLoadError``. LiteRT (``ai_edge_litert``, falling back to ``tflite_runtime``) and
onnxruntime are imported lazily, so a device needs only the runtime its models use.

Datatypes are Open Inference Protocol names (``protocol.DATATYPE_BYTES``); a model tensor
of a type with no OIP name keeps its runtime's type string, so it can never match a
release's signature. Shapes use -1 for every free or symbolic dimension.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from .errors import ModelLoadError

__all__ = [
    "Array",
    "LoadedModel",
    "TensorSignature",
    "datatype_of_dtype",
    "load_model",
    "numpy_dtype_of",
]

Array = npt.NDArray[Any]
ModelFormat = Literal["onnx", "tflite"]

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
_NUMPY_DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
_DATATYPES_BY_NUMPY = {name: datatype for datatype, name in _NUMPY_DTYPES.items()}


@dataclass(frozen=True)
class TensorSignature:
    """A model's own description of one input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class LoadedModel(Protocol):
    """A model a runtime accepted: what it takes, what it gives, and a way to run it."""

    @property
    def runtime(self) -> str: ...

    @property
    def inputs(self) -> tuple[TensorSignature, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSignature, ...]: ...

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]: ...


def numpy_dtype_of(datatype: str) -> np.dtype[Any]:
    """The native-order numpy dtype of an OIP datatype."""
    return np.dtype(_NUMPY_DTYPES[datatype])


def datatype_of_dtype(dtype: npt.DTypeLike) -> str:
    """The OIP datatype of a numpy dtype, or the dtype's own name if it has none."""
    name = np.dtype(dtype).name
    return _DATATYPES_BY_NUMPY.get(name, name)


def load_model(path: Path, model_format: ModelFormat, *, threads: int = 1) -> LoadedModel:
    """Load ``path`` as ``model_format`` on the CPU with ``threads`` threads."""
    if model_format == "onnx":
        return OnnxModel(path, threads=threads)
    return LiteRtModel(path, threads=threads)


def _shape(dims: Any) -> tuple[int, ...]:
    return tuple(int(dim) if isinstance(dim, int) and dim >= 0 else -1 for dim in dims or ())


class OnnxModel:
    """An onnxruntime CPU session."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError("an ONNX model needs onnxruntime, which is missing") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = _ORT_LOG_ERRORS_ONLY
        # Never let the file name pick the parser (".ort" would select another format).
        options.add_session_config_entry("session.load_model_format", "ONNX")
        try:
            self._session = ort.InferenceSession(
                os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._inputs = tuple(_ort_signature(arg) for arg in self._session.get_inputs())
            self._outputs = tuple(_ort_signature(arg) for arg in self._session.get_outputs())
        except Exception as exc:  # onnxruntime raises its own, untyped exceptions
            raise ModelLoadError(f"onnxruntime cannot load {path.name}: {exc}") from exc
        self._runtime = f"onnxruntime {ort.__version__}"

    @property
    def runtime(self) -> str:
        return self._runtime

    @property
    def inputs(self) -> tuple[TensorSignature, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSignature, ...]:
        return self._outputs

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        try:
            values = self._session.run(None, dict(feeds))
        except Exception as exc:  # onnxruntime raises its own, untyped exceptions
            raise ModelLoadError(f"onnxruntime failed to run the model: {exc}") from exc
        return {
            spec.name: np.asarray(value) for spec, value in zip(self._outputs, values, strict=True)
        }


def _ort_signature(arg: Any) -> TensorSignature:
    return TensorSignature(
        str(arg.name), _ORT_DATATYPES.get(arg.type, str(arg.type)), _shape(arg.shape)
    )


def _interpreter_class() -> tuple[Any, str]:
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            import tflite_runtime
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise ModelLoadError(
                "a TFLite model needs ai-edge-litert (or tflite-runtime), which is missing"
            ) from exc
        return Interpreter, f"tflite_runtime {getattr(tflite_runtime, '__version__', '?')}"
    return Interpreter, f"litert {getattr(ai_edge_litert, '__version__', '?')}"


def _litert_signature(detail: Mapping[str, Any]) -> TensorSignature:
    signature = detail.get("shape_signature")
    shape = signature if signature is not None and len(signature) else detail["shape"]
    return TensorSignature(
        str(detail["name"]), datatype_of_dtype(detail["dtype"]), _shape(list(shape))
    )


class LiteRtModel:
    """A LiteRT interpreter; inputs with a free dimension are resized per call."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        interpreter_class, self._runtime = _interpreter_class()
        try:
            self._interpreter = interpreter_class(model_path=os.fspath(path), num_threads=threads)
            self._interpreter.allocate_tensors()
            input_details = self._interpreter.get_input_details()
            output_details = self._interpreter.get_output_details()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"LiteRT cannot load {path.name}: {exc}") from exc
        self._input_index = {str(d["name"]): int(d["index"]) for d in input_details}
        self._output_index = {str(d["name"]): int(d["index"]) for d in output_details}
        self._inputs = tuple(_litert_signature(d) for d in input_details)
        self._outputs = tuple(_litert_signature(d) for d in output_details)

    @property
    def runtime(self) -> str:
        return self._runtime

    @property
    def inputs(self) -> tuple[TensorSignature, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSignature, ...]:
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
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"LiteRT failed to run the model: {exc}") from exc
