"""Recognise a model file by its content, check it, and prove that its runtime loads it.

Invariants: the format comes from the bytes (a TFLite flatbuffer carries the identifier
``TFL3`` at offset 4; an ONNX file starts with a ModelProto field key), never from the
file name alone; every check of ``onnx_checks`` passes before an InferenceSession exists;
a TFLite model's declared tensors are sized before its tensors are allocated.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tensors import ModelFormat, TensorSpec

from .errors import MalformedModelError, UnsupportedFormatError
from .onnx_checks import DEFAULT_MAX_TENSOR_BYTES, verify_onnx_model
from .runners import ModelRunner, open_litert_runner, open_onnx_runner

__all__ = [
    "LoadedModel",
    "ModelFormat",
    "ModelInfo",
    "detect_format",
    "inspect_model",
    "open_model",
]

logger = logging.getLogger(__name__)

TFLITE_IDENTIFIER = b"TFL3"
# The first byte of an ONNX file is the key of a ModelProto field: ir_version (1),
# producer_name (2), producer_version (3), domain (4), model_version (5), doc_string (6),
# graph (7), opset_import (8), metadata_props (14); fields 20, 25 and 26 take two bytes.
_ONNX_FIRST_KEYS = frozenset({0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72})
_ONNX_TWO_BYTE_KEYS = frozenset({b"\xa2\x01", b"\xca\x01", b"\xd2\x01"})
_HASH_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ModelInfo:
    """What ``inspect`` reports about a model that passed every check and loaded."""

    format: ModelFormat
    opset: int | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    size_bytes: int
    sha256: str
    producer: str | None

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "opset": self.opset,
            "inputs": [spec.to_json_obj() for spec in self.inputs],
            "outputs": [spec.to_json_obj() for spec in self.outputs],
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "producer": self.producer,
        }


@dataclass(frozen=True)
class LoadedModel:
    """A checked model and the runner that loaded it."""

    path: Path
    info: ModelInfo
    runner: ModelRunner
    precision: Literal["fp32", "fp16", "int8"]


def detect_format(head: bytes) -> ModelFormat:
    """The format of a model from its first bytes, or ``UnsupportedFormatError``."""
    if len(head) >= 8 and head[4:8] == TFLITE_IDENTIFIER:
        return "tflite"
    if head[:1] and (head[0] in _ONNX_FIRST_KEYS or head[:2] in _ONNX_TWO_BYTE_KEYS):
        return "onnx"
    if not head:
        raise UnsupportedFormatError("the file is empty")
    raise UnsupportedFormatError(
        "the file is neither an ONNX protobuf nor a TFLite flatbuffer (no 'TFL3' identifier)"
    )


def _digest(path: Path) -> tuple[int, str, bytes]:
    sha = hashlib.sha256()
    size = 0
    head = b""
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            if not head:
                head = chunk[:16]
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest(), head


def open_model(path: Path, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> LoadedModel:
    """Check ``path`` as untrusted input, then load it; raises a ``ConversionError`` leaf."""
    try:
        size, sha256, head = _digest(path)
    except OSError as exc:
        raise MalformedModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    model_format = detect_format(head)
    if model_format == "onnx":
        proto, opset = verify_onnx_model(path, max_tensor_bytes=max_tensor_bytes)
        onnx_runner = open_onnx_runner(path)
        producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p)
        info = ModelInfo(
            "onnx", opset, onnx_runner.inputs, onnx_runner.outputs, size, sha256, producer or None
        )
        precision = _onnx_precision(proto)
        return LoadedModel(path, info, onnx_runner, precision)
    tflite_runner = open_litert_runner(path, max_tensor_bytes=max_tensor_bytes)
    info = ModelInfo(
        "tflite",
        None,
        tflite_runner.inputs,
        tflite_runner.outputs,
        size,
        sha256,
        _tflite_description(path),
    )
    return LoadedModel(path, info, tflite_runner, _tflite_precision(path))


def inspect_model(path: Path, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> ModelInfo:
    """``open_model`` for its report: format, signature, size, hash, producer."""
    return open_model(path, max_tensor_bytes=max_tensor_bytes).info


_INT8_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
    "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
})  # fmt: skip


def _onnx_precision(proto: Any) -> Literal["fp32", "fp16", "int8"]:
    from onnx import TensorProto

    if any(node.op_type in _INT8_OPS for node in proto.graph.node):
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in proto.graph.initializer):
        return "fp16"
    return "fp32"


def _tflite_model(path: Path) -> Any:
    from ai_edge_litert import schema_py_generated as schema

    return schema.Model.GetRootAs(path.read_bytes(), 0)


def _tflite_description(path: Path) -> str | None:
    # Only read after the interpreter verified the flatbuffer; still, a reader error
    # on odd bytes costs the producer string, nothing else.
    try:
        description = _tflite_model(path).Description()
    except (ImportError, ValueError, IndexError, TypeError, OSError) as exc:
        logger.debug("no TFLite description: %s", exc)
        return None
    return description.decode("utf-8", "replace") if description else None


def _tflite_precision(path: Path) -> Literal["fp32", "fp16", "int8"]:
    try:
        model = _tflite_model(path)
        types = {
            model.Subgraphs(s).Tensors(t).Type()
            for s in range(model.SubgraphsLength())
            for t in range(model.Subgraphs(s).TensorsLength())
        }
    except (ImportError, ValueError, IndexError, TypeError, OSError) as exc:
        logger.debug("cannot read TFLite tensor types: %s", exc)
        return "fp32"
    from ai_edge_litert.schema_py_generated import TensorType

    if types & {TensorType.INT8, TensorType.UINT8}:
        return "int8"
    if TensorType.FLOAT16 in types:
        return "fp16"
    return "fp32"
