"""``OnnxBackend``: an onnxruntime ``InferenceSession`` as an ``InferenceBackend``.

Invariants: the session is created from the file path (so external data resolves) and
always parsed as ONNX, whatever the file is called; onnxruntime's untyped exceptions are
translated here, once; ``run`` is thread-safe because ``InferenceSession.run`` is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import _ort_compat
from .backend import CPU_PROVIDER, Array, BackendBase, RuntimeOptions, runtime_shape
from .datatypes import datatype_of_ort
from .errors import ModelRefusedError, RunFailedError, RuntimeMissingError
from .spec import TensorSpec

__all__ = ["OnnxBackend"]

_ORT_LOG_ERRORS_ONLY = 3


class OnnxBackend(BackendBase):
    """An onnxruntime session; ``InferenceSession.run`` is thread-safe."""

    PLATFORM = "onnxruntime"

    def __init__(self, path: Path, options: RuntimeOptions | None = None) -> None:
        options = options or RuntimeOptions()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeMissingError("an ONNX model needs onnxruntime, which is missing") from exc
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.log_severity_level = _ORT_LOG_ERRORS_ONLY
        if not options.graph_optimizations:
            session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # Never let the file name pick the parser (".ort" would select another format).
        session_options.add_session_config_entry("session.load_model_format", "ONNX")
        try:
            self._session = ort.InferenceSession(
                os.fspath(path), sess_options=session_options, providers=list(options.providers)
            )
            self._inputs = tuple(_ort_spec(arg) for arg in self._session.get_inputs())
            self._outputs = tuple(_ort_spec(arg) for arg in self._session.get_outputs())
        except Exception as exc:  # onnxruntime raises its own, untyped exceptions
            raise ModelRefusedError(f"onnxruntime cannot load {path.name}: {exc}") from exc
        self._runtime = f"onnxruntime {ort.__version__}"
        self._output_names = [spec.name for spec in self._outputs]
        # Callers of ``run`` pass exactly the model's inputs, so a CPU-only session may
        # call the C++ binding underneath (see ``_ort_compat``); other providers keep the
        # public ``run`` for its provider fallback.
        binding_run = _ort_compat.binding_run(self._session)
        cpu_only = tuple(self._session.get_providers()) == (CPU_PROVIDER,)
        self._run = binding_run if cpu_only and binding_run is not None else self._session.run

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        try:
            values = self._run(
                self._output_names, feeds if isinstance(feeds, dict) else dict(feeds), None
            )
        except Exception as exc:  # onnxruntime raises its own, untyped exceptions
            raise RunFailedError(f"onnxruntime failed to run the model: {exc}") from exc
        return {
            name: np.asarray(value) for name, value in zip(self._output_names, values, strict=True)
        }


def _ort_spec(arg: Any) -> TensorSpec:
    # A type with no OIP name keeps onnxruntime's string ("seq(tensor(float))").
    datatype = datatype_of_ort(arg.type) or str(arg.type)
    return TensorSpec(str(arg.name), datatype, runtime_shape(arg.shape))
