"""The sandboxed model check, run by ``agent.update.sandbox`` in a child process.

It reads one job (JSON) on stdin, and answers one JSON object on stdout: exit 0 with the
report, or exit 3 (``EXIT_REFUSED``) with ``{"reason": ..., "error": ...}`` where
``reason`` is the code of a ``ModelCheckError``. Anything else (a crash, a kill by a
limit) is for the parent to name.

Invariants:
- it runs only under the limits ``agent.update.sandbox`` set before this module was imported;
- the answer goes to the stdout the parent gave it, while file descriptor 1 is pointed at
  stderr before any runtime loads: native code that prints cannot corrupt the answer;
- the model's actual inputs and outputs are checked against the release's signature
  before any golden input is fed to it; golden cases come from the release's check
  bundle (``tensors.read_check_bundle``, no pickles), whose hash the parent verified;
- every output of every run it judges is finite, and every golden output is within
  ``atol + rtol * |expected|`` of the expected value (``numpy.allclose``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import tensors
from protocol import TensorSpec
from tensors import Array, CheckBundle, GoldenCase, InferenceBackend, numpy_dtype_of

from ..backends import load_backend
from ..errors import (
    CheckBundleError,
    GoldenMismatchError,
    LatencyBudgetError,
    ModelCheckError,
    NonFiniteOutputError,
    SandboxKilledError,
    SignatureMismatchError,
)
from .memory import peak_resident_bytes, resident_bytes

__all__ = ["EXIT_REFUSED", "MAX_JOB_BYTES", "main", "run_check"]

EXIT_REFUSED = 3
# The job names files; only the release's I/O signature travels in it.
MAX_JOB_BYTES = 1024 * 1024
_FLOAT_KINDS = frozenset("fc")


def run_check(job: Mapping[str, Any]) -> dict[str, Any]:
    """Load the model, check its signature, golden cases and latency; return the report."""
    inputs = [TensorSpec.model_validate(spec) for spec in job["inputs"]]
    outputs = [TensorSpec.model_validate(spec) for spec in job["outputs"]]
    golden = load_check_bundle(Path(job["check_bundle_path"])).golden
    budget_ms: float | None = job["latency_budget_ms"]

    # Runtime imported, bundle read: what the process holds before the model is its own.
    tensors.import_runtime(job["format"])
    before_bytes = resident_bytes()
    model = load_backend(Path(job["model_path"]), job["format"])
    verify_signature("input", inputs, model.inputs)
    verify_signature("output", outputs, model.outputs)
    for index, case in enumerate(golden):
        feeds = golden_feeds(index, case, inputs)
        verify_golden_outputs(f"golden case {index}", case, outputs, model.run(feeds))
    if golden:
        feeds = golden_feeds(0, golden[0], inputs)
    else:
        # Nothing to compare with, but the model must still run and give finite numbers.
        feeds = {
            spec.name: np.zeros(_concrete(spec.shape), numpy_dtype_of(spec.datatype))
            for spec in inputs
        }
        verify_finite("a zero input", model.run(feeds))

    latencies_ms = measure_latency_ms(
        model, feeds, warmup_runs=job["warmup_runs"], timed_runs=job["timed_runs"]
    )
    p50_ms, max_ms = statistics.median(latencies_ms), max(latencies_ms)
    if budget_ms is not None and p50_ms > budget_ms:
        raise LatencyBudgetError(
            f"p50 latency {p50_ms:.3f} ms is over the budget of {budget_ms:.3f} ms "
            f"(max {max_ms:.3f} ms over {len(latencies_ms)} runs)"
        )
    return {
        # What loading and running the model added at its peak: the memory it needs.
        "memory_bytes": max(0, peak_resident_bytes() - before_bytes),
        "golden_cases": len(golden),
        "latency_ms_p50": p50_ms,
        "latency_ms_max": max_ms,
        "runtime": model.runtime,
    }


def _concrete(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(1 if dim == -1 else dim for dim in shape)


def _compatible(declared: Sequence[int], actual: Sequence[int]) -> bool:
    return len(declared) == len(actual) and all(
        d == a or d == -1 or a == -1 for d, a in zip(declared, actual, strict=True)
    )


def verify_signature(
    kind: str, declared: Sequence[TensorSpec], actual: Sequence[tensors.TensorSpec]
) -> None:
    """The model's ``kind``s (inputs or outputs) are the release's, by name, type and shape."""
    declared_names = sorted(spec.name for spec in declared)
    actual_names = sorted(signature.name for signature in actual)
    if declared_names != actual_names:
        raise SignatureMismatchError(
            f"the model's {kind}s are {actual_names}, the release declares {declared_names}"
        )
    by_name = {signature.name: signature for signature in actual}
    for spec in declared:
        model = by_name[spec.name]
        if spec.datatype != model.datatype or not _compatible(spec.shape, model.shape):
            raise SignatureMismatchError(
                f"{kind} {spec.name!r} is {model.datatype}{list(model.shape)} in the model, "
                f"{spec.datatype}{spec.shape} in the release"
            )


def load_check_bundle(path: Path) -> CheckBundle:
    try:
        return tensors.read_check_bundle(path)
    except tensors.CheckBundleError as exc:
        raise CheckBundleError(f"the check bundle does not read: {exc}") from exc
    except OSError as exc:
        raise CheckBundleError(f"the check bundle {path.name} cannot be read: {exc}") from exc


def golden_feeds(index: int, case: GoldenCase, inputs: Sequence[TensorSpec]) -> dict[str, Array]:
    given = sorted(case.inputs)
    declared = sorted(spec.name for spec in inputs)
    if given != declared:
        raise SignatureMismatchError(
            f"golden case {index} gives inputs {given}, the release declares {declared}"
        )
    for spec in inputs:
        array = case.inputs[spec.name]
        datatype = tensors.datatype_of_numpy(array.dtype)
        if datatype != spec.datatype or not _compatible(spec.shape, array.shape):
            raise SignatureMismatchError(
                f"golden case {index}: input {spec.name!r} is {datatype}{list(array.shape)}, "
                f"the release declares {spec.datatype}{spec.shape}"
            )
    return dict(case.inputs)


def verify_finite(where: str, outputs: Mapping[str, Array]) -> None:
    for name, value in outputs.items():
        if value.dtype.kind not in _FLOAT_KINDS:
            continue
        bad = int(np.count_nonzero(~np.isfinite(value)))
        if bad:
            nan = int(np.count_nonzero(np.isnan(value)))
            raise NonFiniteOutputError(
                f"{where}: output {name!r} has {bad} non-finite values of {value.size} "
                f"({nan} NaN, {bad - nan} infinite)"
            )


def verify_golden_outputs(
    where: str, case: GoldenCase, outputs: Sequence[TensorSpec], actual: Mapping[str, Array]
) -> None:
    verify_finite(where, actual)
    specs = {spec.name: spec for spec in outputs}
    for name, expected in case.expected_outputs.items():
        spec = specs.get(name)
        datatype = tensors.datatype_of_numpy(expected.dtype)
        if spec is None or datatype != spec.datatype:
            raise SignatureMismatchError(
                f"{where}: expected output {name!r} ({datatype}) is not "
                "an output the release declares"
            )
        value = actual[name]
        if value.shape != expected.shape:
            raise GoldenMismatchError(
                f"{where}: output {name!r} has shape {list(value.shape)}, "
                f"expected {list(expected.shape)}"
            )
        got, want = value.astype(np.float64), expected.astype(np.float64)
        if not np.allclose(got, want, atol=case.atol, rtol=case.rtol):
            error = np.abs(got - want)
            worst = np.unravel_index(int(np.argmax(error)), error.shape)
            raise GoldenMismatchError(
                f"{where}: output {name!r} is off by up to {float(error[worst]):.6g} "
                f"at {[int(i) for i in worst]} (got {float(got[worst]):.6g}, expected "
                f"{float(want[worst]):.6g}; atol {case.atol:g}, rtol {case.rtol:g})"
            )


def measure_latency_ms(
    model: InferenceBackend, feeds: Mapping[str, Array], *, warmup_runs: int, timed_runs: int
) -> list[float]:
    for _ in range(warmup_runs):
        model.run(feeds)
    latencies_ms = []
    for _ in range(max(timed_runs, 1)):
        started = time.perf_counter()
        model.run(feeds)
        latencies_ms.append((time.perf_counter() - started) * 1000.0)
    return latencies_ms


def main() -> int:
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    data = sys.stdin.buffer.read(MAX_JOB_BYTES + 1)
    if len(data) > MAX_JOB_BYTES:
        raise SystemExit(f"the job is larger than {MAX_JOB_BYTES} bytes")
    try:
        result: dict[str, Any] = run_check(json.loads(data))
        code = 0
    except ModelCheckError as exc:
        result, code = {"reason": exc.reason, "error": str(exc)}, EXIT_REFUSED
    except MemoryError:
        result = {"reason": SandboxKilledError.reason, "error": "ran out of memory"}
        code = EXIT_REFUSED
    answer.write(json.dumps(result, allow_nan=False))
    answer.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
