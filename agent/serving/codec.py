"""The Open Inference Protocol (KServe v2) codec: bodies in, numpy arrays, bodies out.

Tensors travel as JSON ``data`` or, with the binary tensor data extension that Triton and
KServe serve, as raw little-endian bytes after a JSON header whose length the
``Inference-Header-Content-Length`` HTTP header gives: an input says
``parameters.binary_data_size``, and an output is sent that way when the request asks
(``parameters.binary_data`` on the output, or ``binary_data_output`` on the request).

Pure: bytes and arrays in, arrays, bytes or an ``InferenceRequestError`` out; no sockets,
no threads, no clock (import-linter checks it). ``agent.serving.http_api`` carries it over
HTTP.

Invariants:
- request bodies are standard JSON: ``NaN``/``Infinity`` literals, invalid UTF-8 and
  nesting deeper than 1,024 levels are refused with a 400;
- JSON ``data`` is never cast silently: integers outside the datatype's range, numbers
  that would overflow a float datatype to infinity (``1e300`` for ``FP32``, ``70000``
  for ``FP16``), fractions for integer types and numbers for ``BOOL`` are refused;
- a shape has at most ``MAX_SHAPE_DIMS`` dimensions and its non-zero dimensions multiply
  to fewer bytes than numpy can index (``MAX_TENSOR_BYTES``), so ``[0, 2**62, 2**62]`` is
  a 400 and never reaches numpy, which would raise;
- binary input data must be exactly ``prod(shape) * itemsize`` bytes, the binary parts
  must add up to the body after the header, and ``BOOL`` bytes must be 0 or 1; binary
  data is read straight into a numpy array, with no Python object per element;
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
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import orjson

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
    InputShapeError,
    MalformedRequestError,
    ModelNotReadyError,
    RequestTooLargeError,
    UnknownModelError,
)

__all__ = [
    "MAX_SHAPE_DIMS",
    "MAX_TENSOR_BYTES",
    "InferRequest",
    "Reply",
    "decode_binary_tensor",
    "decode_infer_request",
    "decode_tensor",
    "encode_infer_response",
    "encode_json",
    "encode_model_metadata",
    "error_reply",
    "status_of",
    "verify_shape",
]

# numpy 1.x allows 32 dimensions, 2.x 64; no model takes more than a handful.
MAX_SHAPE_DIMS = 32
# numpy refuses an array whose non-zero dimensions times its itemsize overflow its index
# type, even when another dimension is 0 and it would hold nothing.
MAX_TENSOR_BYTES = int(np.iinfo(np.intp).max)

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
    # With binary outputs: the length of the JSON header at the start of ``body``.
    json_length: int | None = None


class InferRequest(NamedTuple):
    inputs: dict[str, Array]
    requested: list[str] | None  # output names, or None for all
    request_id: str | None
    binary_outputs: bool  # the request's ``binary_data_output``: the default per output
    binary_by_output: dict[str, bool]  # an output's own ``binary_data``, when it says


def encode_json(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def error_reply(status: int, message: str, *, allow: bytes = b"") -> Reply:
    return Reply(status, encode_json({"error": message}), allow)


def status_of(exc: InferenceError) -> int:
    return next((status for kind, status in _STATUS_OF_ERROR if isinstance(exc, kind)), 500)


def verify_shape(name: str, shape: Sequence[int], itemsize: int) -> None:
    """Raise ``InputShapeError`` for a shape numpy could not make an array of."""
    if len(shape) > MAX_SHAPE_DIMS:
        raise InputShapeError(
            f"input {name!r} has {len(shape)} dimensions; at most {MAX_SHAPE_DIMS} are allowed"
        )
    declared = math.prod(dim for dim in shape if dim) * itemsize  # Python ints: no overflow
    if declared > MAX_TENSOR_BYTES:
        raise InputShapeError(
            f"input {name!r}: shape {list(shape)} is too large for any array "
            f"({declared} bytes without its zero dimensions)"
        )


def decode_tensor(name: str, datatype: str, shape: list[int], data: list[Any]) -> Array:
    """One JSON tensor as a numpy array of ``datatype`` and ``shape``; never a silent cast."""
    dtype = numpy_dtype_of(datatype)
    verify_shape(name, shape, dtype.itemsize)
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
            # numpy makes floats or objects of integers that none of its integer types
            # holds all of ([-1, 2**64 - 1], [2**70]), and floats of [0, 2**64 - 1].
            values = list(_leaves(data))
            if not all(type(value) is int for value in values):
                raise InputDataError(f"input {name!r} is {datatype}: data must be integers")
            _verify_integer_range(name, datatype, min(values), max(values))
            array = np.array(values, dtype=dtype)
        elif array.dtype != dtype:
            _verify_integer_range(name, datatype, int(array.min()), int(array.max()))
    else:
        return _to_float(name, datatype, array, data).reshape(shape)
    return array.astype(dtype, copy=False).reshape(shape)


def _leaves(data: list[Any]) -> Iterator[Any]:
    """The values of nested lists, in order (on error paths only: one object per value)."""
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            yield value
        else:
            stack.pop()


def _verify_integer_range(name: str, datatype: str, low: int, high: int) -> None:
    info = np.iinfo(numpy_dtype_of(datatype))
    if low < info.min or high > info.max:
        raise InputDataError(
            f"input {name!r} is {datatype}: data from {low} to {high} is out of "
            f"its range [{info.min}, {info.max}]"
        )


def _to_float(name: str, datatype: str, array: Array, data: list[Any]) -> Array:
    """``array`` as ``datatype``, refusing a finite value that becomes infinite in it."""
    dtype = numpy_dtype_of(datatype)
    limit = float(np.finfo(dtype).max)
    if array.dtype.kind == "O":  # integers too large for int64 or uint64, maybe with floats
        if not all(type(value) in (int, float) for value in _leaves(data)):
            raise InputDataError(f"input {name!r} is {datatype}: data must be numbers")
        try:
            array = np.array([float(value) for value in _leaves(data)], dtype=np.float64)
        except OverflowError:  # beyond FP64
            raise InputDataError(
                f"input {name!r} is {datatype}: data holds an integer out of its range "
                f"[{-limit:.6g}, {limit:.6g}]"
            ) from None
    elif array.dtype.kind not in "iuf":
        raise InputDataError(f"input {name!r} is {datatype}: data must be numbers")
    with np.errstate(over="ignore"):  # overflow is checked below, once for the array
        converted = array.astype(dtype, copy=False)
    finite = np.isfinite(converted)
    if not finite.all():
        # Parsed JSON has no Infinity or NaN, but a caller's list may: those stay.
        overflowed = ~finite & np.isfinite(array)
        if overflowed.any():
            value = float(array.flat[int(np.argmax(overflowed))])
            raise InputDataError(
                f"input {name!r} is {datatype}: {value:.6g} is out of its range "
                f"[{-limit:.6g}, {limit:.6g}]"
            )
    return converted


def decode_binary_tensor(
    name: str, datatype: str, shape: list[int], data: bytes | bytearray | memoryview
) -> Array:
    """One binary tensor (little-endian, row-major) as a read-only numpy array over
    ``data``, without a copy."""
    dtype = numpy_dtype_of(datatype)
    verify_shape(name, shape, dtype.itemsize)
    needed = math.prod(shape) * dtype.itemsize
    if len(data) != needed:
        raise InputDataError(
            f"input {name!r} has {len(data)} bytes of binary data; {datatype} {shape} "
            f"needs {needed}"
        )
    array = np.frombuffer(data, dtype=dtype.newbyteorder("<"))
    if dtype.kind == "b" and array.size and array.view(np.uint8).max() > 1:
        raise InputDataError(f"input {name!r} is BOOL: binary bytes must be 0 or 1")
    return array.astype(dtype, copy=False).reshape(shape)


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise MalformedRequestError(f"{what}: 'parameters' must be an object")
    return parameters


def _flag(parameters: dict[str, Any], key: str, what: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise MalformedRequestError(f"{what}: '{key}' must be true or false")
    return value


MAX_REQUEST_ID_CHARS = 256


def decode_feedback(body: bytes | bytearray) -> tuple[str, int]:
    """A feedback body, ``{"id": <an inference response's id>, "label": <class index>}``."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequestError(f"the body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise MalformedRequestError('the body must be {"id": "...", "label": <class index>}')
    request_id, label = document.get("id"), document.get("label")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_CHARS:
        raise MalformedRequestError(
            f"'id' must be the inference response's id, 1 to {MAX_REQUEST_ID_CHARS} characters"
        )
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        raise MalformedRequestError("'label' must be the true class index, an integer >= 0")
    return request_id, label


def decode_infer_request(body: bytes | bytearray, json_length: int | None = None) -> InferRequest:
    """An infer request's body; ``json_length`` is its ``Inference-Header-Content-Length``."""
    header, binary = body, memoryview(b"")
    if json_length is not None:
        if not 0 < json_length <= len(body):
            raise MalformedRequestError(
                f"Inference-Header-Content-Length {json_length} does not fit a body of "
                f"{len(body)} bytes"
            )
        header, binary = body[:json_length], memoryview(body)[json_length:]
    try:
        # orjson: a 224x224 image as JSON parses about 3.5x faster than with json, nesting
        # is capped, and NaN/Infinity are refused as standard JSON requires (as Triton does).
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequestError(f"the body is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise MalformedRequestError("the body must be a JSON object with an 'inputs' list")
    request_id = document.get("id")
    if request_id is not None and (
        not isinstance(request_id, str) or len(request_id) > MAX_REQUEST_ID_CHARS
    ):
        raise MalformedRequestError(f"'id' must be a string of at most {MAX_REQUEST_ID_CHARS}")
    tensors = document.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise MalformedRequestError("'inputs' must be a non-empty list of tensors")
    feeds: dict[str, Array] = {}
    offset = 0
    for tensor in tensors:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise MalformedRequestError("every input must be an object with a 'name' string")
        name: str = tensor["name"]
        if name in feeds:
            raise InputNameError(f"input {name!r} is given twice")
        size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
        shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
        if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
            raise MalformedRequestError(
                f"input {name!r}: 'shape' must be a list of non-negative integers"
            )
        if datatype not in OIP_DATATYPES:
            raise InputDatatypeError(
                f"input {name!r}: datatype {datatype!r} is not one of {sorted(OIP_DATATYPES)}"
            )
        if size is not None:
            if type(size) is not int or size < 0:
                raise MalformedRequestError(
                    f"input {name!r}: 'binary_data_size' must be a non-negative integer"
                )
            if data is not None:
                raise MalformedRequestError(f"input {name!r} has both 'data' and binary data")
            chunk = binary[offset : offset + size]
            if len(chunk) != size:
                raise InputDataError(
                    f"input {name!r}: the body ends {size - len(chunk)} bytes short of its "
                    "binary data (is Inference-Header-Content-Length set?)"
                )
            offset += size
            feeds[name] = decode_binary_tensor(name, datatype, shape, chunk)
            continue
        if not isinstance(data, list):
            raise MalformedRequestError(f"input {name!r}: 'data' must be a list")
        feeds[name] = decode_tensor(name, datatype, shape, data)
    if offset != len(binary):
        raise MalformedRequestError(
            f"{len(binary) - offset} bytes of binary data follow the last binary input"
        )
    binary_outputs = _flag(
        _parameters(document, "the request"), "binary_data_output", "the request"
    )
    requested = document.get("outputs")
    if requested is None:
        return InferRequest(feeds, None, request_id, bool(binary_outputs), {})
    if not isinstance(requested, list) or not all(
        isinstance(output, dict) and isinstance(output.get("name"), str) for output in requested
    ):
        raise MalformedRequestError("'outputs' must be a list of objects with a 'name' string")
    by_output = {}
    for output in requested:
        what = f"output {output['name']!r}"
        flag = _flag(_parameters(output, what), "binary_data", what)
        if flag is not None:
            by_output[output["name"]] = flag
    names = [output["name"] for output in requested]
    return InferRequest(feeds, names, request_id, bool(binary_outputs), by_output)


def encode_infer_response(
    model_name: str,
    model_version: str,
    outputs: Mapping[str, Array],
    request: InferRequest,
) -> Reply:
    """The response to ``request``: its requested outputs (else all), each as JSON data or,
    where the request asks, as binary data after the JSON header."""
    names = list(outputs) if request.requested is None else request.requested
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.request_id is not None:
        document["id"] = request.request_id
    entries, buffers = [], []
    for name in names:
        array = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": reported_datatype(array.dtype),
            "shape": list(array.shape),
        }
        if request.binary_by_output.get(name, request.binary_outputs):
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            buffers.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    document["outputs"] = entries
    header = encode_json(document)
    if not buffers:
        return Reply(200, header)
    return Reply(200, b"".join([header, *buffers]), json_length=len(header))


def encode_model_metadata(
    name: str,
    version: str,
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    parameters: Mapping[str, Any] | None = None,
) -> bytes:
    """A model's metadata: its serving version, platform, inputs, outputs and how it runs
    (``parameters``, e.g. ``intra_op_threads``)."""
    document: dict[str, Any] = {
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
    if parameters:
        document["parameters"] = dict(parameters)
    return encode_json(document)
