"""Converters' door to the runtime backends of ``tensors``: load a checked model, run it.

Runners only run models that ``inspection`` already checked. ``tensors`` errors are
translated here, once, ``from`` the original: a runtime that refuses to load or to run
the model is ``MalformedModelError``, a missing runtime ``MissingDependencyError``, a
declared tensor above the limit ``TensorTooLargeError``. The backend reports an input or
output with no Open Inference Protocol datatype by its runtime's type; converters refuse
such a model with ``UnsupportedDatatypeError``, since a release could not describe it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import tensors
from tensors import Array, InferenceBackend, ModelFormat, RuntimeOptions, TensorSpec

from .errors import (
    ConversionError,
    MalformedModelError,
    MissingDependencyError,
    TensorTooLargeError,
    UnsupportedDatatypeError,
)

__all__ = ["EVAL_THREADS", "ModelRunner", "open_litert_runner", "open_onnx_runner"]

# Evaluation and profiling run single-threaded: timings are steadier, like small devices.
EVAL_THREADS = 1

_INSTALL_HINTS: dict[ModelFormat, str] = {
    "onnx": "an ONNX model needs onnxruntime: pip install 'edgefleet[convert]'",
    "tflite": (
        "a TFLite model needs ai-edge-litert (or tflite-runtime): pip install 'edgefleet[tflite]'"
    ),
}


def open_onnx_runner(path: Path, *, optimize: bool = True) -> ModelRunner:
    """An onnxruntime CPU session, created from the file path so external data resolves.

    ``optimize=False`` runs the graph as written, with no node fused away.
    """
    options = RuntimeOptions(intra_op_threads=EVAL_THREADS, graph_optimizations=optimize)
    try:
        backend: InferenceBackend = tensors.OnnxBackend(path, options)
    except tensors.TensorsError as exc:
        raise _translated(exc, "onnx") from exc
    return ModelRunner(backend)


def open_litert_runner(path: Path, *, max_tensor_bytes: int | None = None) -> ModelRunner:
    """A LiteRT interpreter; its declared tensors are sized before they are allocated."""
    options = RuntimeOptions(intra_op_threads=EVAL_THREADS)
    try:
        backend: InferenceBackend = tensors.LiteRtBackend(
            path, options, max_tensor_bytes=max_tensor_bytes
        )
    except tensors.TensorsError as exc:
        raise _translated(exc, "tflite") from exc
    return ModelRunner(backend)


def _translated(exc: tensors.TensorsError, model_format: ModelFormat) -> ConversionError:
    if isinstance(exc, tensors.RuntimeMissingError):
        return MissingDependencyError(_INSTALL_HINTS[model_format])
    if isinstance(exc, tensors.TensorTooLargeError):
        return TensorTooLargeError(str(exc))
    if isinstance(exc, tensors.UnsupportedDatatypeError):
        return UnsupportedDatatypeError(str(exc))
    return MalformedModelError(str(exc))


def _verify_oip_datatypes(backend: InferenceBackend) -> None:
    for spec in (*backend.inputs, *backend.outputs):
        if spec.is_oip:
            continue
        if backend.platform == tensors.OnnxBackend.PLATFORM:
            message = f"{spec.name!r} is of type {spec.datatype}, not a tensor of an OIP datatype"
        else:
            message = f"tensor {spec.name!r} has dtype {spec.datatype}, which has no OIP datatype"
        raise UnsupportedDatatypeError(message)


class ModelRunner:
    """A loaded model: its signature, and a function from named inputs to named outputs.

    Every input and output has an OIP datatype; ``run`` raises ``MalformedModelError``
    when the runtime fails.
    """

    def __init__(self, backend: InferenceBackend) -> None:
        _verify_oip_datatypes(backend)
        self._backend = backend

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._backend.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._backend.outputs

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        try:
            return self._backend.run(feeds)
        except tensors.TensorsError as exc:  # RunFailedError: the model's fault, not the data's
            raise MalformedModelError(str(exc)) from exc
