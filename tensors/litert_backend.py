"""``LiteRtBackend``: a LiteRT (TFLite) interpreter as an ``InferenceBackend``.

Invariants:
- LiteRT is ``ai_edge_litert``, falling back to ``tflite_runtime``, imported lazily;
- with ``max_tensor_bytes``, every tensor the flatbuffer declares is sized before
  ``allocate_tensors``, so a model cannot make this process allocate more than the limit
  per tensor; a dynamic dimension counts as 1 (a lower bound);
- ``run`` is safe to call from several threads at once. A TFLite interpreter is not:
  ``run`` is serialized with a lock rather than keeping one interpreter per thread,
  because on a small device every interpreter copy costs the model's memory again and the
  interpreter already spreads one inference over ``intra_op_threads`` threads;
- inputs of a shape other than the one allocated resize the interpreter for that call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Array, BackendBase, RuntimeOptions, runtime_shape
from .datatypes import reported_datatype
from .errors import ModelRefusedError, RunFailedError, RuntimeMissingError, TensorTooLargeError
from .spec import TensorSpec, declared_bytes

__all__ = ["LiteRtBackend", "load_interpreter_class"]


def load_interpreter_class() -> tuple[Any, str]:
    """LiteRT's ``Interpreter`` (or tflite_runtime's) and the runtime's name and version."""
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            import tflite_runtime
            from tflite_runtime.interpreter import Interpreter
        except ImportError as exc:
            raise RuntimeMissingError(
                "a TFLite model needs ai-edge-litert (or tflite-runtime), which is missing"
            ) from exc
        return Interpreter, f"tflite_runtime {getattr(tflite_runtime, '__version__', '?')}"
    return Interpreter, f"litert {getattr(ai_edge_litert, '__version__', '?')}"


def _litert_spec(detail: Mapping[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    shape = signature if signature is not None and len(signature) else detail["shape"]
    # A type with no OIP name keeps numpy's name for it ("complex64").
    return TensorSpec(
        str(detail["name"]), reported_datatype(detail["dtype"]), runtime_shape(list(shape))
    )


class LiteRtBackend(BackendBase):
    """A LiteRT interpreter behind a lock; inputs of a new shape resize it per call."""

    PLATFORM = "litert"

    def __init__(
        self,
        path: Path,
        options: RuntimeOptions | None = None,
        *,
        max_tensor_bytes: int | None = None,
    ) -> None:
        options = options or RuntimeOptions()
        interpreter_class, self._runtime = load_interpreter_class()
        threads = options.intra_op_threads or None
        try:
            self._interpreter = interpreter_class(model_path=os.fspath(path), num_threads=threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelRefusedError(f"LiteRT cannot load {path.name}: {exc}") from exc
        if max_tensor_bytes is not None:
            self._verify_tensor_sizes(max_tensor_bytes)
        try:
            self._interpreter.allocate_tensors()
            input_details = self._interpreter.get_input_details()
            output_details = self._interpreter.get_output_details()
        except (ValueError, RuntimeError) as exc:
            raise ModelRefusedError(f"LiteRT cannot load {path.name}: {exc}") from exc
        self._lock = threading.Lock()
        self._input_index = {str(d["name"]): int(d["index"]) for d in input_details}
        # The shape each input is allocated for; emptied when a resize may have half failed.
        self._allocated_shapes: dict[str, tuple[int, ...]] = {
            str(d["name"]): tuple(int(n) for n in d["shape"]) for d in input_details
        }
        self._output_index = {str(d["name"]): int(d["index"]) for d in output_details}
        self._inputs = tuple(_litert_spec(d) for d in input_details)
        self._outputs = tuple(_litert_spec(d) for d in output_details)

    def _verify_tensor_sizes(self, max_tensor_bytes: int) -> None:
        try:
            details = self._interpreter.get_tensor_details()
        except (ValueError, RuntimeError) as exc:
            raise ModelRefusedError(f"LiteRT cannot list the tensors: {exc}") from exc
        for detail in details:
            size = declared_bytes(
                [int(d) for d in detail["shape"]], np.dtype(detail["dtype"]).itemsize
            )
            if size > max_tensor_bytes:
                raise TensorTooLargeError(
                    f"tensor {detail['name']!r} declares {list(detail['shape'])}: {size} bytes, "
                    f"above the limit of {max_tensor_bytes}"
                )

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
                raise RunFailedError(f"LiteRT failed to run the model: {exc}") from exc
