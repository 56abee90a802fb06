"""Evaluate a candidate model against its parent on the same inputs, in this process.

Invariants: both models see exactly the same batches; both are warmed up first; their
timings interleave batch by batch (alternating which goes first) so that a noisy
neighbour or a frequency change hurts both alike; latency is the median per-batch wall
time. Accuracy is measured against labels only; agreement and error against the
reference outputs when the validation set has them, otherwise against the parent.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tensors import Array, TensorSpec

from .errors import BadValidationSetError, SignatureMismatchError
from .inspection import LoadedModel, open_model
from .onnx_checks import DEFAULT_MAX_TENSOR_BYTES
from .runners import ModelRunner
from .validation import (
    ValidationSet,
    batch_size_of,
    generate_inputs,
    iter_batches,
    load_validation_set,
)

__all__ = [
    "EvaluationReport",
    "evaluate",
    "evaluate_loaded",
    "predicted_classes",
    "verify_same_signature",
]

WARMUP_RUNS = 3
MIN_TIMED_BATCHES = 30
MAX_TIMING_ROUNDS = 20


@dataclass(frozen=True)
class EvaluationReport:
    """The report ``evaluate`` prints and ``variant`` embeds; ratios are candidate / parent."""

    samples: int
    size_bytes_parent: int
    size_bytes_candidate: int
    size_ratio: float
    latency_ms_parent: float
    latency_ms_candidate: float
    latency_ratio: float
    latency_batch_size: int
    accuracy_parent: float | None
    accuracy_candidate: float | None
    accuracy_drop_points: float | None
    top1_agreement: float | None
    max_abs_error: float | None
    nonfinite_outputs: int
    reference: Literal["labels", "outputs", "parent"]

    def to_json_obj(self) -> dict[str, Any]:
        return {
            key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in asdict(self).items()
        }


def verify_same_signature(parent: ModelRunner, candidate: ModelRunner) -> None:
    """The candidate must take and give the same named tensors of the same datatypes and rank."""
    for what, theirs, ours in (
        ("inputs", parent.inputs, candidate.inputs),
        ("outputs", parent.outputs, candidate.outputs),
    ):
        want = [(spec.name, spec.datatype, len(spec.shape)) for spec in theirs]
        got = [(spec.name, spec.datatype, len(spec.shape)) for spec in ours]
        if want != got:
            raise SignatureMismatchError(f"{what} differ: parent {want}, candidate {got}")


def predicted_classes(specs: Sequence[TensorSpec], arrays: Mapping[str, Array]) -> Array | None:
    """Top-1 class per sample: argmax of the first 2-D score output, else a 1-D label output."""
    for spec in specs:
        array = arrays.get(spec.name)
        if array is not None and spec.is_float and array.ndim == 2 and array.shape[1] > 1:
            return np.asarray(np.argmax(array, axis=1))
    for spec in specs:
        array = arrays.get(spec.name)
        if array is not None and not spec.is_float and array.ndim == 1:
            return array
    return None


def _concat(parts: list[dict[str, Array]]) -> dict[str, Array]:
    return {
        name: np.concatenate([np.atleast_1d(part[name]) for part in parts], axis=0)
        for name in parts[0]
    }


def _timed(runner: ModelRunner, batch: Mapping[str, Array]) -> tuple[dict[str, Array], float]:
    started = time.perf_counter()  # monotonic, and fine-grained enough for one batch
    outputs = runner.run(batch)
    return outputs, (time.perf_counter() - started) * 1000.0


def run_interleaved(
    parent: ModelRunner, candidate: ModelRunner, data: ValidationSet
) -> tuple[dict[str, Array], dict[str, Array], float, float, int]:
    """Outputs of both models on every batch, and their median per-batch latency in ms."""
    fixed = batch_size_of(parent.inputs)
    batches = list(iter_batches(data.inputs, fixed))
    if not batches:
        raise BadValidationSetError(
            f"{data.samples} samples are fewer than the model's fixed batch of {fixed}"
        )
    for runner in (parent, candidate):
        for _ in range(WARMUP_RUNS):
            runner.run(batches[0])
    rounds = min(MAX_TIMING_ROUNDS, math.ceil(MIN_TIMED_BATCHES / len(batches)))
    timings: tuple[list[float], list[float]] = ([], [])
    outputs: tuple[list[dict[str, Array]], list[dict[str, Array]]] = ([], [])
    for round_index in range(rounds):
        for index, batch in enumerate(batches):
            order = (0, 1) if (index + round_index) % 2 == 0 else (1, 0)
            for which in order:
                result, elapsed_ms = _timed((parent, candidate)[which], batch)
                timings[which].append(elapsed_ms)
                if round_index == 0:
                    outputs[which].append(result)
    batch_size = int(next(iter(batches[0].values())).shape[0])
    return (
        _concat(outputs[0]),
        _concat(outputs[1]),
        statistics.median(timings[0]),
        statistics.median(timings[1]),
        batch_size,
    )


def _compare(
    specs: Sequence[TensorSpec], reference: Mapping[str, Array], candidate: Mapping[str, Array]
) -> tuple[float | None, int]:
    max_error: float | None = None
    nonfinite = 0
    for spec in specs:
        if not spec.is_float or spec.name not in reference:
            continue
        want = np.asarray(reference[spec.name], dtype=np.float64)
        got = np.asarray(candidate[spec.name], dtype=np.float64)
        if want.shape != got.shape:
            raise SignatureMismatchError(
                f"output {spec.name!r}: reference shape {list(want.shape)}, "
                f"candidate shape {list(got.shape)}"
            )
        both = np.isfinite(want) & np.isfinite(got)
        nonfinite += int(np.count_nonzero(np.isfinite(want) & ~np.isfinite(got)))
        error = float(np.max(np.abs(want - got), where=both, initial=0.0))
        max_error = error if max_error is None else max(max_error, error)
    return max_error, nonfinite


def evaluate_loaded(
    parent: LoadedModel, candidate: LoadedModel, data: ValidationSet
) -> EvaluationReport:
    """The report for two loaded models on one validation set."""
    verify_same_signature(parent.runner, candidate.runner)
    parent_out, candidate_out, parent_ms, candidate_ms, batch_size = run_interleaved(
        parent.runner, candidate.runner, data
    )
    specs = parent.runner.outputs
    samples = int(next(iter(parent_out.values())).shape[0])
    reference_kind: Literal["labels", "outputs", "parent"] = "parent"
    reference = parent_out
    accuracy_parent = accuracy_candidate = None
    parent_classes = predicted_classes(specs, parent_out)
    candidate_classes = predicted_classes(specs, candidate_out)
    if data.labels is not None:
        reference_kind = "labels"
        labels = data.labels[:samples]
        if parent_classes is not None and candidate_classes is not None:
            accuracy_parent = float(np.mean(parent_classes == labels))
            accuracy_candidate = float(np.mean(candidate_classes == labels))
    elif data.reference_outputs is not None:
        reference_kind = "outputs"
        reference = {name: array[:samples] for name, array in data.reference_outputs.items()}
        parent_classes = predicted_classes(specs, reference)
    agreement = None
    if parent_classes is not None and candidate_classes is not None:
        agreement = float(np.mean(parent_classes == candidate_classes))
    max_error, nonfinite = _compare(specs, reference, candidate_out)
    drop = None
    if accuracy_parent is not None and accuracy_candidate is not None:
        drop = (accuracy_parent - accuracy_candidate) * 100.0
    return EvaluationReport(
        samples=samples,
        size_bytes_parent=parent.info.size_bytes,
        size_bytes_candidate=candidate.info.size_bytes,
        size_ratio=candidate.info.size_bytes / parent.info.size_bytes,
        latency_ms_parent=parent_ms,
        latency_ms_candidate=candidate_ms,
        latency_ratio=candidate_ms / parent_ms if parent_ms > 0 else math.nan,
        latency_batch_size=batch_size,
        accuracy_parent=accuracy_parent,
        accuracy_candidate=accuracy_candidate,
        accuracy_drop_points=drop,
        top1_agreement=agreement,
        max_abs_error=max_error,
        nonfinite_outputs=nonfinite,
        reference=reference_kind,
    )


def validation_or_generated(
    model: LoadedModel, validation: Path | None, *, seed: int
) -> ValidationSet:
    """The npz checked against ``model``, or seeded inputs generated from its spec."""
    if not model.runner.inputs:
        raise BadValidationSetError(f"{model.path.name} takes no inputs: nothing to run it on")
    if validation is None:
        return generate_inputs(model.runner.inputs, seed=seed)
    return load_validation_set(validation, model.runner.inputs, model.runner.outputs)


def evaluate(
    parent: Path,
    candidate: Path,
    validation: Path | None = None,
    *,
    seed: int = 0,
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
) -> EvaluationReport:
    """Check and load both models, then evaluate the candidate against the parent."""
    parent_model = open_model(parent, max_tensor_bytes=max_tensor_bytes)
    candidate_model = open_model(candidate, max_tensor_bytes=max_tensor_bytes)
    data = validation_or_generated(parent_model, validation, seed=seed)
    return evaluate_loaded(parent_model, candidate_model, data)
