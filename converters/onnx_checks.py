"""Checks an untrusted ONNX file must pass before anything allocates or runs it.

Order matters and is kept by ``verify_onnx_model``: parse the protobuf without external
data; check every external-data location (no absolute path, no ``..``, no symlink out of
the model's directory) before any of it is read; refuse opsets and IR versions newer than
onnx and onnxruntime know; refuse declared tensors above the byte limit; only then run
the ONNX checker, which reads external data; then refuse inferred intermediate tensors
above the limit. Creating an InferenceSession comes after.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from google.protobuf.message import DecodeError
from onnx import GraphProto, ModelProto, TensorProto, helper

from tensors import declared_bytes

from .errors import (
    ExternalDataEscapeError,
    FutureOpsetError,
    MalformedModelError,
    TensorTooLargeError,
)

__all__ = [
    "DEFAULT_MAX_TENSOR_BYTES",
    "load_onnx_proto",
    "max_supported_ir_version",
    "max_supported_opset",
    "verify_external_data",
    "verify_inferred_sizes",
    "verify_onnx_model",
    "verify_opsets",
    "verify_tensor_sizes",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_TENSOR_BYTES = 1 << 30
DEFAULT_DOMAINS = {"", "ai.onnx"}
_ORT_OPSET_LIMIT = re.compile(r"support for domain (\S+) is till opset (\d+)")
_ORT_IR_LIMIT = re.compile(r"max supported IR version: (\d+)")


def load_onnx_proto(path: Path) -> ModelProto:
    """Parse the protobuf only: external data stays on disk, unread."""
    try:
        return onnx.load(os.fspath(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise MalformedModelError(f"{path.name} is not a readable ONNX protobuf: {exc}") from exc


def _graph_tensors(graph: GraphProto) -> Iterator[TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graph_tensors(subgraph)


def _all_tensors(model: ModelProto) -> Iterator[TensorProto]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors


def _is_outside(location: str) -> bool:
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    return (
        posix.is_absolute()
        or windows.is_absolute()
        or bool(windows.drive)
        or location.startswith(("/", "\\"))
        or ".." in posix.parts
        or ".." in windows.parts
    )


def verify_external_data(model: ModelProto, model_dir: Path) -> None:
    """Every external-data file must resolve, symlinks included, inside ``model_dir``."""
    root = model_dir.resolve()
    for tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        if not location or "\x00" in location:
            raise MalformedModelError(f"tensor {tensor.name!r}: external data without a location")
        if _is_outside(location):
            raise ExternalDataEscapeError(
                f"tensor {tensor.name!r}: external data location {location!r} "
                "is not a relative path inside the model's directory"
            )
        resolved = (root / location).resolve()
        if not resolved.is_relative_to(root):
            raise ExternalDataEscapeError(
                f"tensor {tensor.name!r}: external data {location!r} resolves to a file "
                "outside the model's directory (symlink)"
            )
        if not resolved.is_file():
            raise MalformedModelError(
                f"tensor {tensor.name!r}: external data file {location!r} does not exist"
            )


def _ort_refusal(probe: ModelProto) -> str:
    """Why onnxruntime refuses ``probe`` (empty if it loads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(
            probe.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001 - the probe is expected to fail; we read why
        return str(exc)
    return ""


def _probe_model(opsets: list[tuple[str, int]], ir_version: int) -> ModelProto:
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets],
        ir_version=ir_version,
    )


@functools.cache
def max_supported_opset(domain: str) -> int | None:
    """The newest opset of ``domain`` that both onnx and onnxruntime support.

    onnxruntime has no API for it; it names its limit when it refuses a model stamped
    with an absurd opset, so one tiny probe model per domain tells it honestly.
    """
    onnx_limit = {
        "": onnx.defs.onnx_opset_version(),
        "ai.onnx.ml": onnx.defs.onnx_ml_opset_version(),
    }.get(domain)
    opsets = [("", onnx.defs.onnx_opset_version())] if domain else []
    opsets.append((domain, 10_000))
    message = _ort_refusal(_probe_model(opsets, onnx.IR_VERSION))
    ort_limit: int | None = None
    for match in _ORT_OPSET_LIMIT.finditer(message):
        if match.group(1) == (domain or "ai.onnx"):
            ort_limit = int(match.group(2))
    limits = [limit for limit in (onnx_limit, ort_limit) if limit is not None]
    return min(limits) if limits else None


@functools.cache
def max_supported_ir_version() -> int:
    """The newest IR version both onnx and onnxruntime read (probed like the opsets)."""
    message = _ort_refusal(_probe_model([("", onnx.defs.onnx_opset_version())], 10_000))
    match = _ORT_IR_LIMIT.search(message)
    return min(onnx.IR_VERSION, int(match.group(1))) if match else onnx.IR_VERSION


def verify_opsets(model: ModelProto) -> int | None:
    """Refuse opsets and IR versions newer than this installation; return the default opset."""
    ir_limit = max_supported_ir_version()
    if model.ir_version > ir_limit:
        raise FutureOpsetError(
            f"IR version {model.ir_version} is newer than the {ir_limit} "
            "that the installed onnx and onnxruntime support"
        )
    default_opset: int | None = None
    for opset in model.opset_import:
        domain = "" if opset.domain in DEFAULT_DOMAINS else opset.domain
        if domain == "":
            default_opset = opset.version
        limit = max_supported_opset(domain)
        if limit is not None and opset.version > limit:
            shown = domain or "ai.onnx"
            raise FutureOpsetError(
                f"opset {opset.version} of domain {shown} is newer than the {limit} "
                "that the installed onnx and onnxruntime support"
            )
    return default_opset


def verify_tensor_sizes(model: ModelProto, max_tensor_bytes: int) -> None:
    """Refuse any initializer or declared static shape above ``max_tensor_bytes``."""
    for tensor in _all_tensors(model):
        size = _tensor_bytes(list(tensor.dims), tensor.data_type)
        if size > max_tensor_bytes:
            raise TensorTooLargeError(
                f"tensor {tensor.name!r} declares {list(tensor.dims)}: {size} bytes, "
                f"above the limit of {max_tensor_bytes}"
            )
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if not value.type.HasField("tensor_type"):
            continue
        tensor_type = value.type.tensor_type
        dims = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim]
        size = _tensor_bytes(dims, tensor_type.elem_type)
        if size > max_tensor_bytes:
            raise TensorTooLargeError(
                f"value {value.name!r} declares shape {dims}: at least {size} bytes, "
                f"above the limit of {max_tensor_bytes}"
            )


def _tensor_bytes(dims: list[int], elem_type: int) -> int:
    if any(dim < -1 for dim in dims):
        raise MalformedModelError(f"negative dimension in declared shape {dims}")
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except (KeyError, ValueError, TypeError):
        itemsize = 1
    return declared_bytes(dims, itemsize)


def verify_onnx_model(path: Path, *, max_tensor_bytes: int) -> tuple[ModelProto, int | None]:
    """All static checks, in order; returns the parsed proto and its default-domain opset."""
    model = load_onnx_proto(path)
    verify_external_data(model, path.parent)
    opset = verify_opsets(model)
    verify_tensor_sizes(model, max_tensor_bytes)
    try:
        onnx.checker.check_model(os.fspath(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise MalformedModelError(f"the ONNX checker refuses {path.name}: {exc}") from exc
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise MalformedModelError(f"the ONNX checker cannot read {path.name}: {exc}") from exc
    verify_inferred_sizes(model, max_tensor_bytes)
    return model, opset


def verify_inferred_sizes(model: ModelProto, max_tensor_bytes: int) -> None:
    """Refuse intermediate tensors whose inferred static shape exceeds the limit.

    A constant ``ConstantOfShape`` declares nothing big, yet onnxruntime folds it into a
    tensor when the session is created. Inference runs on the proto without external
    data, so it stays small; it is best effort, since the checker already passed.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        logger.debug("shape inference for the size check failed: %s", exc)
        return
    verify_tensor_sizes(inferred, max_tensor_bytes)
