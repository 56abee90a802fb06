"""A release's check bundle, computed by running the model here.

Golden cases are what a device runs before it activates the exact same artifact: inputs
taken from the validation set (or seeded random inputs built from the input spec), and
the outputs this process computed for exactly those inputs, batch for batch. The reference
profile describes what inputs and outputs looked like, for the agent's drift checks; its
histograms and its classifier choice follow ``tensors.profile``, the rules the agent
applies to live requests, and its ``source`` says whether it describes validation data or
synthetic inputs. Both travel in a ``tensors.check_bundle`` file, never in the release.

Golden cases stay few and spread over the data: at most ``golden_count``, and no more
than fit in ``MAX_GOLDEN_BYTES`` (a 1x3x224x224 FP32 image is 588 KiB), so a device's
download and check stay small for image models too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol import ReferenceProfile
from tensors import (
    Array,
    CheckBundle,
    GoldenCase,
    TensorSpec,
    are_class_probabilities,
    datatype_of_numpy,
    histogram,
)
from tensors.profile import drift_sample, feature_axis, feature_histograms

from .errors import BadValidationSetError, UnsupportedDatatypeError
from .evaluate import validation_or_generated
from .inspection import LoadedModel, open_model
from .onnx_checks import DEFAULT_MAX_TENSOR_BYTES
from .validation import batch_size_of, iter_batches

__all__ = ["MAX_GOLDEN_BYTES", "TOLERANCES", "Profile", "probability_output", "profile_model"]

# What all golden cases together may weigh (inputs and expected outputs).
MAX_GOLDEN_BYTES = 16 * 1024 * 1024

# (atol, rtol) by the precision the model computes in. The device re-runs the very same
# artifact, possibly on another CPU: only kernel choice (SIMD width, FMA, summation
# order, threads) differs. FP32 accumulations then differ by a few ulps of the largest
# partial sums, far below 1e-4 for normalised activations. FP16 has a 1e-3 epsilon and
# some CPUs compute FP16 ops natively while others upcast, so results differ by a few
# FP16 ulps: 1e-2. INT8 kernels differ (VNNI vs. AVX2 vs. NEON, u8/s8 saturation) and
# dynamic quantisation can round an activation to the neighbouring step: 3e-2.
TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (1e-4, 1e-3),
    "fp16": (1e-2, 1e-2),
    "int8": (3e-2, 3e-2),
}


@dataclass(frozen=True)
class Profile:
    """The check bundle of a model and where its golden inputs came from."""

    bundle: CheckBundle
    golden_source: str

    def summary(self) -> dict[str, Any]:
        profile = self.bundle.reference_profile
        return {
            "golden_cases": len(self.bundle.golden),
            "golden_source": self.golden_source,
            "reference_profile": None if profile is None else profile.model_dump(mode="json"),
        }


def _verify_oip(name: str, array: Array) -> Array:
    if datatype_of_numpy(array.dtype) is None:
        raise UnsupportedDatatypeError(
            f"tensor {name!r} has dtype {array.dtype.name}, which has no OIP datatype"
        )
    return array


def probability_output(specs: Sequence[TensorSpec], outputs: Mapping[str, Array]) -> str | None:
    """The first float output that holds class probabilities (``tensors.profile``'s rule)."""
    for spec in specs:
        array = outputs.get(spec.name)
        if array is not None and spec.is_float and are_class_probabilities(array):
            return spec.name
    return None


def _golden_starts(
    loaded: LoadedModel, outputs: Mapping[str, Array], case_size: int, count: int
) -> list[int]:
    """Up to ``count`` batch starts, spread evenly, preferring clear top-1 answers."""
    samples = int(next(iter(outputs.values())).shape[0])
    starts = list(range(0, samples - case_size + 1, case_size))
    scores = next(
        (
            outputs[s.name]
            for s in loaded.runner.outputs
            if s.is_float and outputs[s.name].ndim == 2 and outputs[s.name].shape[1] > 1
        ),
        None,
    )
    if scores is not None:
        # Keep cases whose top-1 class cannot flip within the tolerance, so that a device
        # never fails a label output over a near tie.
        atol, rtol = TOLERANCES[loaded.precision]
        ordered = np.sort(np.asarray(scores, dtype=np.float64), axis=1)
        margin = ordered[:, -1] - ordered[:, -2]
        safe = margin > 2 * (atol + rtol * np.abs(ordered[:, -1]))
        clear = [s for s in starts if bool(np.all(safe[s : s + case_size]))]
        starts = clear or starts
    if count >= len(starts):
        return starts
    picks = np.linspace(0, len(starts) - 1, count).round().astype(int)
    return [starts[i] for i in sorted(set(picks.tolist()))]


def profile_model(
    model: Path,
    validation: Path | None = None,
    *,
    golden_count: int = 4,
    seed: int = 0,
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
) -> Profile:
    """Golden cases, the reference profile, and where the golden inputs came from."""
    if golden_count < 0:
        raise BadValidationSetError(f"golden count must be >= 0, got {golden_count}")
    loaded = open_model(model, max_tensor_bytes=max_tensor_bytes)
    runner = loaded.runner
    data = validation_or_generated(loaded, validation, seed=seed)
    fixed = batch_size_of(runner.inputs)
    parts = [runner.run(batch) for batch in iter_batches(data.inputs, fixed)]
    if not parts:
        raise BadValidationSetError(f"{data.samples} samples are fewer than the batch of {fixed}")
    outputs = {
        name: np.concatenate([np.atleast_1d(part[name]) for part in parts]) for name in parts[0]
    }
    evaluated = int(next(iter(outputs.values())).shape[0])
    inputs = {name: array[:evaluated] for name, array in data.inputs.items()}
    case_size = fixed or 1
    case_bytes = sum(a[:case_size].nbytes for a in (*inputs.values(), *outputs.values()))
    count = min(golden_count, max(1, MAX_GOLDEN_BYTES // max(case_bytes, 1)))
    atol, rtol = TOLERANCES[loaded.precision]
    golden = []
    for start in _golden_starts(loaded, outputs, case_size, count):
        case_inputs = {name: array[start : start + case_size] for name, array in inputs.items()}
        expected = runner.run(case_inputs)
        golden.append(
            GoldenCase(
                inputs={s.name: _verify_oip(s.name, case_inputs[s.name]) for s in runner.inputs},
                expected_outputs={
                    s.name: _verify_oip(s.name, expected[s.name]) for s in runner.outputs
                },
                atol=atol,
                rtol=rtol,
            )
        )
    reference = ReferenceProfile.model_validate(
        {
            "source": data.source,
            **_reference_profile(runner.inputs, inputs, runner.outputs, outputs),
        }
    )
    return Profile(CheckBundle(tuple(golden), reference), data.source)


def _reference_profile(
    input_specs: Sequence[TensorSpec],
    inputs: Mapping[str, Array],
    output_specs: Sequence[TensorSpec],
    outputs: Mapping[str, Array],
) -> dict[str, Any]:
    input_hists: dict[str, Any] = {}
    for spec in input_specs:
        array = inputs[spec.name]
        if not spec.is_float or feature_axis(array.shape) is None:
            continue
        if (hist := histogram(drift_sample(array))) is not None:
            input_hists[spec.name] = hist
            input_hists.update(feature_histograms(spec.name, array))
    output_hists = {
        spec.name: hist
        for spec in output_specs
        if (hist := histogram(outputs[spec.name])) is not None
    }
    confidence: float | None = None
    distribution: list[float] | None = None
    if (name := probability_output(output_specs, outputs)) is not None:
        probabilities = np.asarray(outputs[name], dtype=np.float64)
        confidence = float(probabilities.max(axis=1).mean())
        counts = np.bincount(probabilities.argmax(axis=1), minlength=probabilities.shape[1])
        distribution = [float(c) / probabilities.shape[0] for c in counts]
    return {
        "inputs": input_hists,
        "outputs": output_hists,
        "top1_confidence_mean": confidence,
        "class_distribution": distribution,
    }
