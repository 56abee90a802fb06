"""``load_backend``: a model file as an ``InferenceBackend``, by model format; and which
runtimes this process could load at all (devices report it in their state)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from pathlib import Path

from .backend import InferenceBackend, ModelFormat, RuntimeOptions
from .errors import RuntimeMissingError
from .litert_backend import LiteRtBackend
from .onnx_backend import OnnxBackend

__all__ = ["import_runtime", "installed_runtimes", "load_backend"]

# Reported name -> the module that provides it.
_RUNTIME_MODULES = {
    "onnxruntime": "onnxruntime",
    "litert": "ai_edge_litert",
    "tflite_runtime": "tflite_runtime",
}


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


@functools.cache
def installed_runtimes() -> tuple[str, ...]:
    """Runtimes this process can load; looked up once (a search of sys.path each)."""
    return tuple(
        name for name, module in _RUNTIME_MODULES.items() if importlib.util.find_spec(module)
    )


def import_runtime(model_format: ModelFormat) -> None:
    """Import the runtime ``model_format`` needs, if installed: its memory is then held,
    so what loading a model adds afterwards is the model's own (the memory budget)."""
    names = ("onnxruntime",) if model_format == "onnx" else ("ai_edge_litert", "tflite_runtime")
    for name in names:
        if importlib.util.find_spec(name):
            importlib.import_module(name)
            return
