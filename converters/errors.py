"""The errors the converters package raises.

Every refusal of a model, a validation set or a conversion is a ``ConversionError``; the
command line turns any of them into exit code 3 and ``{"error", "kind"}`` on stdout. Each
leaf carries the short ``kind`` the controller records::

    ConversionError                conversion_error
    ├── UnsupportedFormatError     unsupported_format    neither ONNX nor TFLite, or wrong mode
    ├── MalformedModelError        malformed_model       does not parse, check or load
    ├── FutureOpsetError           future_opset          opset or IR version newer than known
    ├── TensorTooLargeError        tensor_too_large      a declared tensor above the limit
    ├── ExternalDataEscapeError    external_data_escape  external data outside the model dir
    ├── UnsupportedDatatypeError   unsupported_datatype  an input or output not a plain tensor
    ├── SignatureMismatchError     signature_mismatch    parent and candidate I/O differ
    ├── BadValidationSetError      bad_validation_set    an npz that does not fit the model
    ├── ConversionFailedError      conversion_failed     no loadable variant could be made
    └── MissingDependencyError     missing_dependency    optional runtime/quantizer missing

Third-party exceptions (onnx, onnxruntime, LiteRT, the quantizers) are translated once,
where they are called, with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadValidationSetError",
    "ConversionError",
    "ConversionFailedError",
    "ExternalDataEscapeError",
    "FutureOpsetError",
    "MalformedModelError",
    "MissingDependencyError",
    "SignatureMismatchError",
    "TensorTooLargeError",
    "UnsupportedDatatypeError",
    "UnsupportedFormatError",
]


class ConversionError(Exception):
    """Root of every error raised by the converters package."""

    kind: ClassVar[str] = "conversion_error"

    def to_json_obj(self) -> dict[str, str]:
        """The refusal as the command line prints it."""
        return {"error": str(self), "kind": self.kind}


class UnsupportedFormatError(ConversionError):
    """The bytes are neither ONNX nor TFLite, or the operation does not apply to the format."""

    kind = "unsupported_format"


class MalformedModelError(ConversionError):
    """The model does not parse, fails the ONNX checker, or its runtime refuses to load it."""

    kind = "malformed_model"


class FutureOpsetError(ConversionError):
    """The model declares an opset or IR version newer than the installed runtime supports."""

    kind = "future_opset"


class TensorTooLargeError(ConversionError):
    """A tensor's declared size exceeds the byte limit; nothing was allocated for it."""

    kind = "tensor_too_large"


class ExternalDataEscapeError(ConversionError):
    """An external-data location points outside the model's directory."""

    kind = "external_data_escape"


class UnsupportedDatatypeError(ConversionError):
    """An input or output is not a tensor of an Open Inference Protocol datatype."""

    kind = "unsupported_datatype"


class SignatureMismatchError(ConversionError):
    """Two models that should be interchangeable take or give different tensors."""

    kind = "signature_mismatch"


class BadValidationSetError(ConversionError):
    """The validation set is missing, unreadable, or does not fit the model's inputs."""

    kind = "bad_validation_set"


class ConversionFailedError(ConversionError):
    """The converter could not produce a variant that loads."""

    kind = "conversion_failed"


class MissingDependencyError(ConversionError):
    """An optional package the operation needs (LiteRT, its quantizer) is not installed."""

    kind = "missing_dependency"
