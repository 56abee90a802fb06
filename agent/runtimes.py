"""Inference backends behind one interface: ONNX Runtime and LiteRT (ARCHITECTURE.md §5).

``load_backend`` opens a model file as an ``InferenceBackend``; the sandboxed check (via
``runtime_loading.load_model``) and the serving path (``agent.serving.server``) both use it, so a
model is read the same way where it is checked and where it serves.

Invariants:
- runtime exceptions are translated here, once: a runtime that refuses to load or to run a
  model raises ``ModelLoadError`` (``raise … from exc``);
- onnxruntime and LiteRT are imported lazily, so a device needs only the runtime its
  models use; LiteRT is ``ai_edge_litert``, falling back to ``tflite_runtime``;
- datatypes are Open Inference Protocol names; a tensor type with no OIP name keeps its
  runtime's type string, so it never matches a release's signature; shapes use -1 for
  every free or symbolic dimension;
- ``run`` is safe to call from several threads at once. An onnxruntime session is
  thread-safe by itself. A TFLite interpreter is not: ``LiteRtBackend`` serializes
  ``run`` with a lock rather than keeping one interpreter per thread, because on a small
  device every interpreter copy costs the model's memory again and the interpreter
  already spreads one inference over ``intra_op_threads`` threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from .errors import ConfigurationError, ModelLoadError

__all__ = [
    "OIP_DATATYPES",
    "Array",
    "InferenceBackend",
    "LiteRtBackend",
    "ModelFormat",
    "OnnxBackend",
    "RuntimeOptions",
    "TensorSignature",
    "datatype_of_dtype",
    "load_backend",
    "numpy_dtype_of",
]

Array = npt.NDArray[Any]
ModelFormat = Literal["onnx", "tflite"]

_ORT_LOG_ERRORS_ONLY = 3
_CPU_PROVIDER = "CPUExecutionProvider"
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
OIP_DATATYPES = frozenset(_NUMPY_DTYPES)


@dataclass(frozen=True)
class TensorSignature:
    """A model's own description of one input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RuntimeOptions:
    """How a backend runs: execution providers (onnxruntime) and thread counts.

    ``intra_op_threads`` is the number of threads one inference may use (LiteRT's
    ``num_threads``); ``inter_op_threads`` only matters to onnxruntime. 0 leaves the
    choice to the runtime, which usually means one thread per core.
    """

    providers: tuple[str, ...] = (_CPU_PROVIDER,)
    intra_op_threads: int = 1
    inter_op_threads: int = 1

    def __post_init__(self) -> None:
        if not self.providers:
            raise ConfigurationError("at least one execution provider is needed")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ConfigurationError(
                f"thread counts cannot be negative (intra {self.intra_op_threads}, "
                f"inter {self.inter_op_threads})"
            )


class InferenceBackend(Protocol):
    """A model a runtime accepted: what it takes, what it gives, and a way to run it.

    ``run`` takes exactly the model's inputs, already of the right datatypes and shapes,
    and may be called from several threads at once.
    """

    @property
    def runtime(self) -> str:
        """The runtime and its version, e.g. ``onnxruntime 1.32.0``."""
        ...

    @property
    def platform(self) -> str:
        """The Open Inference Protocol platform name: ``onnxruntime`` or ``litert``."""
        ...

    @property
    def inputs(self) -> tuple[TensorSignature, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSignature, ...]: ...

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]: ...


def numpy_dtype_of(datatype: str) -> np.dtype[Any]:
    """The native-order numpy dtype of an OIP datatype (``KeyError`` if it has none)."""
    return np.dtype(_NUMPY_DTYPES[datatype])


def datatype_of_dtype(dtype: npt.DTypeLike) -> str:
    """The OIP datatype of a numpy dtype, or the dtype's own name if it has none."""
    name = np.dtype(dtype).name
    return _DATATYPES_BY_NUMPY.get(name, name)


def load_backend(
    path: Path, model_format: ModelFormat, options: RuntimeOptions | None = None
) -> InferenceBackend:
    """Load ``path`` as ``model_format``; ``ModelLoadError`` if the runtime refuses it."""
    options = options or RuntimeOptions()
    if model_format == "onnx":
        return OnnxBackend(path, options)
    if model_format == "tflite":
        return LiteRtBackend(path, options)
    raise ModelLoadError(f"no runtime for the model format {model_format!r}")


def _shape(dims: Any) -> tuple[int, ...]:
    # onnxruntime gives ints, names or None; LiteRT gives numpy integers, -1 when free.
    return tuple(
        int(dim) if isinstance(dim, int | np.integer) and dim >= 0 else -1 for dim in dims or ()
    )


class _Backend:
    """What every backend reports about itself; subclasses set the fields when loading."""

    PLATFORM: str = ""
    _runtime: str
    _inputs: tuple[TensorSignature, ...]
    _outputs: tuple[TensorSignature, ...]

    @property
    def runtime(self) -> str:
        return self._runtime

    @property
    def platform(self) -> str:
        return self.PLATFORM

    @property
    def inputs(self) -> tuple[TensorSignature, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSignature, ...]:
        return self._outputs


class OnnxBackend(_Backend):
    """An onnxruntime session; ``InferenceSession.run`` is thread-safe."""

    PLATFORM = "onnxruntime"

    def __init__(self, path: Path, options: RuntimeOptions | None = None) -> None:
        options = options or RuntimeOptions()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError("an ONNX model needs onnxruntime, which is missing") from exc
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.log_severity_level = _ORT_LOG_ERRORS_ONLY
        # Never let the file name pick the parser (".ort" would select another format).
        session_options.add_session_config_entry("session.load_model_format", "ONNX")
        try:
            self._session = ort.InferenceSession(
                os.fspath(path), sess_options=session_options, providers=list(options.providers)
            )
            self._inputs = tuple(_ort_signature(arg) for arg in self._session.get_inputs())
            self._outputs = tuple(_ort_signature(arg) for arg in self._session.get_outputs())
        except Exception as exc:  # onnxruntime raises its own, untyped exceptions
            raise ModelLoadError(f"onnxruntime cannot load {path.name}: {exc}") from exc
        self._runtime = f"onnxruntime {ort.__version__}"
        self._output_names = [spec.name for spec in self._outputs]
        # InferenceSession.run re-checks the feed's names and rebuilds the output names on
        # every call, and only adds a provider fallback that a CPU-only session never
        # uses. Callers of ``run`` pass exactly the model's inputs, so a CPU-only session
        # calls the binding underneath: same C++ call, same outputs, a microsecond less.
        binding = getattr(self._session, "_sess", None)
        cpu_only = tuple(self._session.get_providers()) == (_CPU_PROVIDER,)
        self._run = binding.run if cpu_only and binding is not None else self._session.run

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        try:
            values = self._run(
                self._output_names, feeds if isinstance(feeds, dict) else dict(feeds), None
            )
        except Exception as exc:  # onnxruntime raises its own, untyped exceptions
            raise ModelLoadError(f"onnxruntime failed to run the model: {exc}") from exc
        return {
            name: np.asarray(value) for name, value in zip(self._output_names, values, strict=True)
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


class LiteRtBackend(_Backend):
    """A LiteRT interpreter behind a lock; inputs of a new shape resize it per call."""

    PLATFORM = "litert"

    def __init__(self, path: Path, options: RuntimeOptions | None = None) -> None:
        options = options or RuntimeOptions()
        interpreter_class, self._runtime = _interpreter_class()
        threads = options.intra_op_threads or None
        try:
            self._interpreter = interpreter_class(model_path=os.fspath(path), num_threads=threads)
            self._interpreter.allocate_tensors()
            input_details = self._interpreter.get_input_details()
            output_details = self._interpreter.get_output_details()
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"LiteRT cannot load {path.name}: {exc}") from exc
        self._lock = threading.Lock()
        self._input_index = {str(d["name"]): int(d["index"]) for d in input_details}
        # The shape each input is allocated for; emptied when a resize may have half failed.
        self._allocated_shapes: dict[str, tuple[int, ...]] = {
            str(d["name"]): tuple(int(n) for n in d["shape"]) for d in input_details
        }
        self._output_index = {str(d["name"]): int(d["index"]) for d in output_details}
        self._inputs = tuple(_litert_signature(d) for d in input_details)
        self._outputs = tuple(_litert_signature(d) for d in output_details)

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        interpreter = self._interpreter
        # set_tensor, invoke and get_tensor share the interpreter's buffers: one caller at
        # a time, from the first resize to the last copy out.
        with self._lock:
            shapes = self._allocated_shapes
            try:
                resized = False
                for name, index in self._input_index.items():
                    shape = feeds[name].shape
                    if shapes.get(name) != shape:
                        interpreter.resize_tensor_input(index, list(shape))
                        resized = True
                if resized:
                    shapes.clear()
                    interpreter.allocate_tensors()
                    shapes.update((name, feeds[name].shape) for name in self._input_index)
                for name, index in self._input_index.items():
                    interpreter.set_tensor(index, feeds[name])
                interpreter.invoke()
                # get_tensor returns a copy, which outlives the next call's buffers.
                return {
                    name: interpreter.get_tensor(index)
                    for name, index in self._output_index.items()
                }
            except (ValueError, RuntimeError, KeyError) as exc:
                shapes.clear()
                raise ModelLoadError(f"LiteRT failed to run the model: {exc}") from exc
