"""Derive a variant of a model, evaluate it against its parent, and gate it.

Invariants: the parent passes every ``inspect`` check before any converter reads it; the
variant is written via a temporary file and, once written, always loads (a variant that
does not load is a ``ConversionFailedError`` and is removed); a variant that loads but
fails the gate is still written and reported as rejected, with one reason per threshold.
An ONNX parent that builds its weights at run time is converted from a copy with those
weights folded into initializers (``onnx_fold``); the variant is still evaluated against
the parent itself.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

from .errors import (
    BadValidationSetError,
    ConversionFailedError,
    MalformedModelError,
    SignatureMismatchError,
    UnsupportedFormatError,
)
from .evaluate import EvaluationReport, evaluate_loaded, validation_or_generated
from .fp16 import convert_fp16
from .gate import GateDecision, GatePolicy, judge
from .inspection import LoadedModel, open_model
from .onnx_checks import DEFAULT_MAX_TENSOR_BYTES
from .onnx_fold import builds_weights_at_run_time, fold_constants
from .onnx_quantize import fp32_op_types_onnx, quantize_int8_dynamic, quantize_int8_static
from .tflite_quantize import fp32_op_types_tflite, quantize_tflite_int8_dynamic

__all__ = ["MODES", "Mode", "VariantResult", "make_variant"]

logger = logging.getLogger(__name__)

Mode = Literal["int8-dynamic", "int8-static", "fp16", "tflite-int8-dynamic"]
MODES: tuple[Mode, ...] = ("int8-dynamic", "int8-static", "fp16", "tflite-int8-dynamic")
_MODE_FORMAT = {
    "int8-dynamic": "onnx",
    "int8-static": "onnx",
    "fp16": "onnx",
    "tflite-int8-dynamic": "tflite",
}


@dataclass
class VariantResult:
    mode: Mode
    decision: GateDecision
    report: EvaluationReport
    notes: list[str] = field(default_factory=list)
    fp32_op_types: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.decision.status

    def to_json_obj(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "status": self.status,
            "reasons": list(self.decision.reasons),
            "report": self.report.to_json_obj(),
            "notes": [*self.notes, *self.decision.notes],
            "fp32_op_types": list(self.fp32_op_types),
        }


@dataclass
class _Assessment:
    candidate: LoadedModel
    report: EvaluationReport
    decision: GateDecision


def make_variant(
    mode: Mode,
    parent: Path,
    output: Path,
    validation: Path | None = None,
    *,
    policy: GatePolicy | None = None,
    seed: int = 0,
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
) -> VariantResult:
    """Write the ``mode`` variant of ``parent`` to ``output`` and judge it against ``policy``."""
    if mode not in MODES:
        raise UnsupportedFormatError(f"unknown mode {mode!r}; modes are {', '.join(MODES)}")
    if output.resolve() == parent.resolve():
        raise ConversionFailedError(f"the variant would overwrite its parent {parent.name}")
    policy = policy or GatePolicy()
    parent_model = open_model(parent, max_tensor_bytes=max_tensor_bytes)
    if parent_model.info.format != _MODE_FORMAT[mode]:
        raise UnsupportedFormatError(
            f"mode {mode} needs a {_MODE_FORMAT[mode]} model, {parent.name} is "
            f"{parent_model.info.format}"
        )
    if mode == "int8-static" and validation is None:
        raise BadValidationSetError("int8-static calibrates on the validation set: pass one")
    data = validation_or_generated(parent_model, validation, seed=seed)
    notes: list[str] = []
    if data.source == "generated":
        notes.append(
            f"no validation set: compared with the parent on {data.samples} seeded random "
            f"inputs (seed {seed}); accuracy not measured"
        )
    last: list[_Assessment] = []

    def assess(path: Path) -> bool:
        candidate = open_model(path, max_tensor_bytes=max_tensor_bytes)
        report = evaluate_loaded(parent_model, candidate, data)
        decision = judge(report, policy)
        last.append(_Assessment(candidate, report, decision))
        return decision.accepted

    fp32_op_types: list[str]
    with _convertible(parent, mode, output.parent, notes) as source:
        if mode == "fp16":
            outcome = convert_fp16(source, output, data, assess)
            notes.extend(outcome.notes)
            fp32_op_types = outcome.fp32_op_types
            final = last[-1]
            return VariantResult(mode, final.decision, final.report, notes, fp32_op_types)
        if mode == "int8-dynamic":
            quantize_int8_dynamic(source, output)
        elif mode == "int8-static":
            used = quantize_int8_static(source, output, data, parent_model.runner.inputs)
            notes.append(
                f"calibrated on the first {used} validation samples, which the evaluation "
                "also uses: hold out a separate set for an unbiased accuracy"
            )
        else:
            quantize_tflite_int8_dynamic(source, output)
        try:
            assess(output)
        except (MalformedModelError, SignatureMismatchError) as exc:
            output.unlink(missing_ok=True)
            raise ConversionFailedError(f"the {mode} variant is unusable: {exc}") from exc
        fp32_op_types = (
            fp32_op_types_tflite(output)
            if mode == "tflite-int8-dynamic"
            else fp32_op_types_onnx(onnx.load(output, load_external_data=False))
        )
    final = last[-1]
    return VariantResult(mode, final.decision, final.report, notes, fp32_op_types)


@contextmanager
def _convertible(parent: Path, mode: str, work: Path, notes: list[str]) -> Iterator[Path]:
    """``parent``, or a copy with run-time-built weights folded (ONNX), while converting."""
    if _MODE_FORMAT[mode] != "onnx" or not builds_weights_at_run_time(
        onnx.load(parent, load_external_data=False)
    ):
        yield parent
        return
    with tempfile.TemporaryDirectory(dir=work, prefix=".fold-") as directory:
        folded = Path(directory) / "folded.onnx"
        removed = fold_constants(parent, folded)
        notes.append(
            f"the parent builds its weights at run time: converted from a copy with them "
            f"folded into initializers ({removed} nodes fewer)"
        )
        yield folded
