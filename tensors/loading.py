"""``load_backend``: a model file as an ``InferenceBackend``, by model format."""

from __future__ import annotations

from pathlib import Path

from .backend import InferenceBackend, ModelFormat, RuntimeOptions
from .errors import RuntimeMissingError
from .litert_backend import LiteRtBackend
from .onnx_backend import OnnxBackend

__all__ = ["load_backend"]


def load_backend(
    path: Path, model_format: ModelFormat, options: RuntimeOptions | None = None
) -> InferenceBackend:
    """Load ``path`` as ``model_format``; a ``TensorsError`` leaf if that cannot work."""
    options = options or RuntimeOptions()
    if model_format == "onnx":
        return OnnxBackend(path, options)
    if model_format == "tflite":
        return LiteRtBackend(path, options)
    raise RuntimeMissingError(f"no runtime for the model format {model_format!r}")
