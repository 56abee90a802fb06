"""What every runtime backend is: the ``InferenceBackend`` protocol and ``RuntimeOptions``.

Implementations name their technology: ``tensors.onnx_backend.OnnxBackend`` and
``tensors.litert_backend.LiteRtBackend``; ``tensors.loading.load_backend`` picks one by
model format. The agent serves and checks models with them, converters inspect, evaluate
and profile with them, so a model is read the same way everywhere.

Invariants every backend keeps:
- runtimes are imported lazily, in the backend's constructor, so an install needs only the
  runtime its models use;
- runtime exceptions are translated once, in the backend: a runtime that is missing, that
  refuses to load or that fails to run raises a ``TensorsError`` leaf ``from`` the
  runtime's exception;
- ``inputs`` and ``outputs`` are ``TensorSpec``s with OIP datatypes where the type has one
  and the runtime's own type string where it has none; shapes use -1 for every free or
  symbolic dimension;
- ``run`` may be called from several threads at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from .errors import InvalidOptionsError
from .spec import TensorSpec

__all__ = [
    "CPU_PROVIDER",
    "Array",
    "InferenceBackend",
    "ModelFormat",
    "RuntimeOptions",
]

Array = npt.NDArray[Any]
ModelFormat = Literal["onnx", "tflite"]
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class RuntimeOptions:
    """How a backend runs: execution providers (onnxruntime) and thread counts.

    ``intra_op_threads`` is the number of threads one inference may use (LiteRT's
    ``num_threads``); ``inter_op_threads`` only matters to onnxruntime. 0 leaves the
    choice to the runtime, which usually means one thread per core. ``graph_optimizations``
    off makes onnxruntime run the graph as written (converters compare FP16 and FP32
    intermediate outputs node by node); LiteRT has no such switch.
    """

    providers: tuple[str, ...] = (CPU_PROVIDER,)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimizations: bool = True

    def __post_init__(self) -> None:
        if not self.providers:
            raise InvalidOptionsError("at least one execution provider is needed")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise InvalidOptionsError(
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
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]: ...


def runtime_shape(dims: Any) -> tuple[int, ...]:
    """A runtime's dimensions with -1 for each free one.

    onnxruntime gives ints, names or None; LiteRT gives numpy integers, -1 when free.
    """
    return tuple(
        int(dim) if isinstance(dim, int | np.integer) and dim >= 0 else -1 for dim in dims or ()
    )


class BackendBase:
    """What every backend reports about itself; subclasses set the fields when loading."""

    PLATFORM: str = ""
    _runtime: str
    _inputs: tuple[TensorSpec, ...]
    _outputs: tuple[TensorSpec, ...]

    @property
    def runtime(self) -> str:
        return self._runtime

    @property
    def platform(self) -> str:
        return self.PLATFORM

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs
