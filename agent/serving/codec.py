"""The Open Inference Protocol (KServe v2) codec: JSON bodies in, numpy arrays, JSON out.

Pure: bytes and arrays in, arrays, bytes or an ``InferenceRequestError`` out; no sockets,
no threads, no clock (import-linter checks it). ``agent.serving.http_api`` carries it over
HTTP.

Invariants:
- JSON ``data`` is never cast silently: integers outside the datatype's range, fractions
  for integer types and numbers for ``BOOL`` are refused;
- outputs are written with ``tolist``, which round-trips FP32/FP64 exactly; a non-finite
  output is written as ``NaN``/``Infinity``, as Python's json does (JavaScript's
  ``JSON.parse`` refuses those);
- every error becomes one HTTP status (``status_of``): 404 for an unknown model, 503 while
  no version serves, 413 for a body over the limit, 400 for any other request that does
  not fit, 500 when the runtime fails; the body is ``{"error": message}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

# Submodules, not the ``tensors`` namespace: that one also loads the runtime backends.
from tensors.backend import Array
from tensors.datatypes import OIP_DATATYPES, numpy_dtype_of, reported_datatype
from tensors.spec import TensorSpec

from ..errors import (
    InferenceError,
    InferenceFailedError,
    InferenceRequestError,
    InputDataError,
    InputDatatypeError,
    InputNameError,
    MalformedRequestError,
    ModelNotReadyError,
    RequestTooLargeError,
    UnknownModelError,
)

__all__ = [
    "Reply",
    "decode_infer_request",
    "decode_tensor",
    "encode_infer_response",
    "encode_json",
    "encode_model_metadata",
    "error_reply",
    "status_of",
]

_STATUS_OF_ERROR: tuple[tuple[type[InferenceError], int], ...] = (
    (UnknownModelError, 404),
    (ModelNotReadyError, 503),
    (RequestTooLargeError, 413),
    (InferenceRequestError, 400),
    (InferenceFailedError, 500),
)


class Reply(NamedTuple):
    status: int
    body: bytes
    allow: bytes = b""  # the methods a 405 names


def encode_json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def error_reply(status: int, message: str, *, allow: bytes = b"") -> Reply:
    return Reply(status, encode_json({"error": message}), allow)


def status_of(exc: InferenceError) -> int:
    return next((status for kind, status in _STATUS_OF_ERROR if isinstance(exc, kind)), 500)


def decode_tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> Array:
    """One JSON tensor as a numpy array of ``datatype`` and ``shape``; never a silent cast."""
    dtype = numpy_dtype_of(datatype)
    try:
        array = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise InputDataError(f"input {name!r}: data is not a regular list of numbers") from exc
    count = math.prod(shape)
    if array.size != count:
        raise InputDataError(
            f"input {name!r} has {array.size} values, its shape {shape} needs {count}"
        )
    kind = array.dtype.kind
    if array.size == 0:
        array = np.empty(0, dtype)
    elif dtype.kind == "b":
        if kind != "b":
            raise InputDataError(f"input {name!r} is BOOL: data must be true or false")
    elif dtype.kind in "iu":
        if kind not in "iu":
            raise InputDataError(f"input {name!r} is {datatype}: data must be integers")
        if array.dtype != dtype:
            info = np.iinfo(dtype)
            low, high = int(array.min()), int(array.max())
            if low < info.min or high > info.max:
                raise InputDataError(
                    f"input {name!r} is {datatype}: data from {low} to {high} is out of "
                    f"its range [{info.min}, {info.max}]"
                )
    elif kind not in "iuf":
        raise InputDataError(f"input {name!r} is {datatype}: data must be numbers")
    return array.astype(dtype, copy=False).reshape(shape)


def decode_infer_request(body: bytes) -> tuple[dict[str, Array], list[str] | None, str | None]:
    """An infer request's body as (inputs, requested output names or None, id or None)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedRequestError(f"the body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise MalformedRequestError("the body must be a JSON object with an 'inputs' list")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedRequestError("'id' must be a string")
    tensors = document.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise MalformedRequestError("'inputs' must be a non-empty list of tensors")
    feeds: dict[str, Array] = {}
    for tensor in tensors:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise MalformedRequestError("every input must be an object with a 'name' string")
        name: str = tensor["name"]
        if name in feeds:
            raise InputNameError(f"input {name!r} is given twice")
        parameters = tensor.get("parameters")
        if isinstance(parameters, dict) and "binary_data_size" in parameters:
            raise MalformedRequestError("binary tensor data is not supported: send 'data'")
        shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
        if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
            raise MalformedRequestError(
                f"input {name!r}: 'shape' must be a list of non-negative integers"
            )
        if datatype not in OIP_DATATYPES:
            raise InputDatatypeError(
                f"input {name!r}: datatype {datatype!r} is not one of {sorted(OIP_DATATYPES)}"
            )
        if not isinstance(data, list):
            raise MalformedRequestError(f"input {name!r}: 'data' must be a list")
        feeds[name] = decode_tensor(name, datatype, shape, data)
    requested = document.get("outputs")
    if requested is None:
        return feeds, None, request_id
    if not isinstance(requested, list) or not all(
        isinstance(output, dict) and isinstance(output.get("name"), str) for output in requested
    ):
        raise MalformedRequestError("'outputs' must be a list of objects with a 'name' string")
    return feeds, [output["name"] for output in requested], request_id


def encode_infer_response(
    model_name: str,
    model_version: str,
    outputs: Mapping[str, Array],
    requested: list[str] | None,
    request_id: str | None,
) -> bytes:
    """The response to an infer request: the ``requested`` outputs, else all of them."""
    names = list(outputs) if requested is None else requested
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        document["id"] = request_id
    document["outputs"] = [
        {
            "name": name,
            "datatype": reported_datatype(outputs[name].dtype),
            "shape": list(outputs[name].shape),
            "data": outputs[name].ravel().tolist(),
        }
        for name in names
    ]
    return encode_json(document)


def encode_model_metadata(
    name: str,
    version: str,
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> bytes:
    """A model's metadata: its serving version, platform, inputs and outputs."""
    return encode_json(
        {
            "name": name,
            "versions": [version],
            "platform": platform,
            "inputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in inputs
            ],
            "outputs": [
                {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in outputs
            ],
        }
    )
