"""FP16 variants of ONNX models, keeping in FP32 the op types that FP16 breaks.

``onnxconverter_common`` converts every float tensor and op to FP16 except a block list.
Two things go wrong in practice, and each retry answers one of them with evidence:

- the variant does not load: onnxruntime names the op (``Type parameter (T) of Optype
  (MatMul) bound to different types``, ``Could not find an implementation for X``), or
  the ONNX checker does (``(op_type:Cast): Inferred elem type differs``), or the node is
  named and we look its op type up; that op type joins the block list;
- the variant loads but fails the gate: both models run a validation batch with every
  shared intermediate tensor exposed and graph optimisations off, and the first node (in
  topological order) whose FP16 output is non-finite, or off by more than
  ``FP16_DIVERGENCE`` of the FP32 tensor's magnitude, names the op type to block. Errors
  propagate downstream, so the first divergence is the cause, not a symptom.

Before converting, ``Cast`` nodes whose input already has the target type become
``Identity``: the converter leaves ``Cast(to=FLOAT)`` untouched, so such a no-op cast
(skl2onnx emits one) would feed FP32 into FP16 ops and break loading for no reason.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, ValueInfoProto

from .errors import ConversionFailedError, MalformedModelError
from .onnx_quantize import fp32_op_types_onnx, staged_output
from .runners import open_onnx_runner
from .validation import ValidationSet, batch_size_of, iter_batches

__all__ = ["FP16_DIVERGENCE", "MAX_FP16_ATTEMPTS", "Fp16Outcome", "convert_fp16"]

logger = logging.getLogger(__name__)

MAX_FP16_ATTEMPTS = 5
# FP16 keeps ~3 decimal digits; 1% of a tensor's magnitude is ten times its rounding and
# means overflow, underflow or clamped constants rather than rounding noise.
FP16_DIVERGENCE = 1e-2
_OP_IN_ERROR = (
    re.compile(r"Optype \((\w+)\)"),
    re.compile(r"implementation for (\w+)\("),
    re.compile(r"\(op_type:(\w+)\)"),
)
_NODE_IN_ERROR = (re.compile(r"in node \(([^)]+)\)"), re.compile(r"node with name '([^']+)'"))


@dataclass
class Fp16Outcome:
    """The op types kept in FP32 beyond the converter's defaults, and why."""

    blocked: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fp32_op_types: list[str] = field(default_factory=list)


# ``assess(path)`` loads and gates a candidate; it returns True when the gate accepts and
# raises MalformedModelError when the candidate does not load.
Assess = Callable[[Path], bool]


def _elem_types(model: ModelProto) -> dict[str, int]:
    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except (onnx.shape_inference.InferenceError, ValueError) as exc:
        logger.debug("no inferred types, using the declared ones: %s", exc)
        graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    return types


def replace_noop_casts(model: ModelProto) -> int:
    """Turn ``Cast`` nodes whose input already has the target type into ``Identity``."""
    types = _elem_types(model)
    replaced = 0
    for node in model.graph.node:
        if node.op_type != "Cast" or not node.input:
            continue
        target = next((a.i for a in node.attribute if a.name == "to"), None)
        if target is not None and types.get(node.input[0]) == target:
            node.op_type = "Identity"
            del node.attribute[:]
            replaced += 1
    return replaced


def _convert(model: ModelProto, blocked: list[str]) -> ModelProto:
    from onnxconverter_common import float16

    try:
        converted: ModelProto = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *blocked],
        )
    except Exception as exc:
        raise ConversionFailedError(f"FP16 conversion failed: {exc}") from exc
    _pack_fp16_raw(converted)
    return converted


def _pack_fp16_raw(model: ModelProto) -> None:
    """Store FP16 initializers as raw little-endian bytes.

    The converter leaves them in ``int32_data``, a varint per value (up to 3 bytes), which
    makes the "half size" variant about two thirds of the parent instead of one half.
    """
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT16 and tensor.int32_data:
            tensor.raw_data = np.asarray(tensor.int32_data, dtype="<u2").tobytes()
            del tensor.int32_data[:]


def _op_type_from_load_error(message: str, candidate: ModelProto) -> str | None:
    for pattern in _OP_IN_ERROR:
        if match := pattern.search(message):
            return str(match.group(1))
    by_name = {node.name: node.op_type for node in candidate.graph.node if node.name}
    for pattern in _NODE_IN_ERROR:
        if (match := pattern.search(message)) and match.group(1) in by_name:
            return str(by_name[match.group(1)])
    return None


def _with_outputs(model: ModelProto, names: list[str], path: Path) -> Path:
    probe = ModelProto()
    probe.CopyFrom(model)
    existing = {value.name for value in probe.graph.output}
    probe.graph.output.extend(ValueInfoProto(name=n) for n in names if n not in existing)
    onnx.save(probe, path)
    return path


def first_diverging_op(
    parent: ModelProto, candidate: ModelProto, data: ValidationSet, skip: set[str]
) -> tuple[str, str] | None:
    """The op type and tensor of the first node whose FP16 output diverges, if any."""
    types = _elem_types(parent)
    produced = {out for node in candidate.graph.node for out in node.output}
    order = [
        (node.op_type, out)
        for node in parent.graph.node
        if node.op_type not in skip
        for out in node.output
        if out in produced and types.get(out) == TensorProto.FLOAT
    ]
    if not order:
        return None
    names = [name for _, name in order]
    with tempfile.TemporaryDirectory(prefix="edgefleet-fp16-") as scratch:
        folder = Path(scratch)
        reference = open_onnx_runner(
            _with_outputs(parent, names, folder / "parent.onnx"), optimize=False
        )
        probe = open_onnx_runner(
            _with_outputs(candidate, names, folder / "candidate.onnx"), optimize=False
        )
        batch = next(iter_batches(data.inputs, batch_size_of(reference.inputs)))
        want_all = reference.run(batch)
        got_all = probe.run(batch)
    for op_type, name in order:
        want = np.asarray(want_all[name], dtype=np.float64)
        got = np.asarray(got_all[name], dtype=np.float64)
        if want.shape != got.shape:
            continue
        finite = np.isfinite(want)
        if np.any(finite & ~np.isfinite(got)):
            return op_type, name
        scale = float(np.max(np.abs(want), where=finite, initial=0.0)) or 1.0
        if float(np.max(np.abs(want - got), where=finite, initial=0.0)) > FP16_DIVERGENCE * scale:
            return op_type, name
    return None


def convert_fp16(parent: Path, output: Path, data: ValidationSet, assess: Assess) -> Fp16Outcome:
    """Write an FP16 variant of ``parent`` to ``output`` that loads; see the module doc."""
    from onnxconverter_common import float16

    outcome = Fp16Outcome()
    source = onnx.load(parent)
    if replaced := replace_noop_casts(source):
        outcome.notes.append(f"{replaced} no-op Cast node(s) became Identity before conversion")
    for attempt in range(1, MAX_FP16_ATTEMPTS + 1):
        applied = list(outcome.blocked)
        candidate = _convert(source, applied)
        with staged_output(output) as staged:
            onnx.save(candidate, staged)
        try:
            accepted = assess(output)
        except MalformedModelError as exc:
            op_type = _op_type_from_load_error(str(exc), candidate)
            if op_type is None or op_type in applied or attempt == MAX_FP16_ATTEMPTS:
                output.unlink(missing_ok=True)
                raise ConversionFailedError(
                    f"the FP16 variant does not load even with {applied or 'no op type'} "
                    f"kept in FP32: {exc}"
                ) from exc
            outcome.blocked.append(op_type)
            outcome.notes.append(f"attempt {attempt}: FP16 {op_type} failed to load; kept in FP32")
            continue
        if accepted or attempt == MAX_FP16_ATTEMPTS:
            break
        found = first_diverging_op(source, candidate, data, set(applied))
        if found is None:
            outcome.notes.append(
                f"attempt {attempt}: the FP16 variant fails the gate and no op's output "
                "diverges from FP32 beyond rounding; not retried"
            )
            break
        op_type, tensor = found
        outcome.blocked.append(op_type)
        outcome.notes.append(
            f"attempt {attempt}: FP16 output {tensor!r} of {op_type} diverges from FP32; "
            f"{op_type} kept in FP32"
        )
    outcome.blocked = applied
    # Defaults the graph happens to contain are filtered like any variant's op types; op
    # types a retry blocked are reported even when they only move data (a Cast).
    present = {node.op_type for node in candidate.graph.node}
    defaults = fp32_op_types_onnx(candidate, blocked=frozenset(float16.DEFAULT_OP_BLOCK_LIST))
    outcome.fp32_op_types = sorted({*defaults, *(present & set(applied))})
    return outcome
