"""The errors the tensors package raises.

Every failure is a ``TensorsError``. Runtime exceptions (onnxruntime's untyped ones,
LiteRT's ``ValueError``/``RuntimeError``) are translated in the backend that called the
runtime, once, with ``raise ... from exc``; callers translate these in turn into their own
package's errors at their boundary (the agent into ``ModelLoadError``, converters into
``MalformedModelError`` and friends)::

    TensorsError                  anything below
    ├── RuntimeMissingError       no installed runtime can load this model format
    ├── ModelRefusedError         the runtime refuses to load the model
    ├── RunFailedError            the runtime failed to run the model
    ├── UnsupportedDatatypeError  a datatype with no Open Inference Protocol name
    ├── TensorTooLargeError       a declared tensor above the byte limit; nothing allocated
    ├── InvalidOptionsError       runtime options that cannot work (no provider, < 0 threads)
    └── CheckBundleError          a check bundle that does not read or breaks its format
"""

from __future__ import annotations

__all__ = [
    "CheckBundleError",
    "InvalidOptionsError",
    "ModelRefusedError",
    "RunFailedError",
    "RuntimeMissingError",
    "TensorTooLargeError",
    "TensorsError",
    "UnsupportedDatatypeError",
]


class TensorsError(Exception):
    """Root of every error raised by the tensors package."""


class RuntimeMissingError(TensorsError):
    """The runtime a model format needs is not installed (or there is none for it)."""


class ModelRefusedError(TensorsError):
    """The runtime refused to load the model: it does not parse, verify or allocate."""


class RunFailedError(TensorsError):
    """The runtime failed on inputs handed to ``run``."""


class UnsupportedDatatypeError(TensorsError):
    """A datatype that is not one of the twelve Open Inference Protocol datatypes."""

    def __init__(self, message: str, *, datatype: str) -> None:
        super().__init__(message)
        self.datatype = datatype


class TensorTooLargeError(TensorsError):
    """A tensor's declared size exceeds the byte limit; nothing was allocated for it."""


class InvalidOptionsError(TensorsError):
    """Runtime options that no runtime could honour."""


class CheckBundleError(TensorsError):
    """A check bundle (golden cases, reference profile) that does not read as one."""
