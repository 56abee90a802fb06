"""edgefleet's model converters: inspect, quantize, evaluate and profile models.

The controller runs this package as a subprocess job and reads JSON from its stdout, so a
crash here never takes the API down. Of ours it imports only ``protocol`` and ``tensors``
(import-linter checks it): datatypes, runtime backends and the profile rules are those
``tensors`` shares with the agent. The functions below are the same operations without
the process around them.

Contract of ``python -m converters <command> ...``
===================================================

Exit 0: one JSON object on stdout. Exit 3: the model, the data or the conversion is
refused, and stdout holds ``{"error": "<human reason>", "kind": "<kind>"}`` with kind one of
``malformed_model``, ``unsupported_format``, ``future_opset``, ``tensor_too_large``,
``external_data_escape``, ``unsupported_datatype``, ``signature_mismatch``,
``bad_validation_set``, ``conversion_failed``, ``missing_dependency``. Any other exit code
means the job crashed (stderr says why). Logs go to stderr only (``EDGEFLEET_LOG_LEVEL``).

Every command takes ``--max-tensor-bytes N`` (default 1 GiB, env
``EDGEFLEET_MAX_TENSOR_BYTES``) and ``--seed N`` (default 0, for generated inputs).

A tensor description (TENSOR_SPEC) is ``{"name", "datatype", "shape"}``: an Open Inference
Protocol datatype (BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16,
FP32, FP64) and a list of ints with -1 for a dynamic or symbolic dimension.

``inspect MODEL``
    The format comes from the content (TFLite: identifier ``TFL3`` at offset 4). ONNX:
    external data must stay inside the model's directory, opsets and IR version must be
    known to the installed onnx and onnxruntime, no declared tensor may exceed the limit,
    ``onnx.checker`` (full check) must pass, then onnxruntime must load it. TFLite: LiteRT
    (or tflite_runtime) verifies the flatbuffer, tensor sizes are checked, then allocated.
    -> ``{"format": "onnx"|"tflite", "opset": int|null, "inputs": [TENSOR_SPEC],
    "outputs": [TENSOR_SPEC], "size_bytes": int, "sha256": hex, "producer": str|null}``

``variant --mode MODE --parent P --output OUT [--validation VAL.npz]
[--max-accuracy-drop-points 1.0] [--min-top1-agreement 0.99] [--max-abs-error X]``
    MODE: ``int8-dynamic``, ``int8-static`` (QDQ, calibrated on VAL; without VAL: exit 3
    ``bad_validation_set``), ``fp16`` (ops that break FP16 are kept in FP32, see
    ``converters.fp16``), ``tflite-int8-dynamic`` (LiteRT Quantizer, ``.tflite`` only).
    Writes OUT, evaluates it against P and applies the gate. A variant that fails the gate
    is still written: exit 0 with status ``rejected``. A variant that cannot be made to
    load is removed: exit 3 ``conversion_failed``. Without VAL, seeded random inputs from
    the input spec are compared with the parent (no accuracy), and a note says so.
    -> ``{"mode", "status": "accepted"|"rejected", "reasons": [str], "report": REPORT,
    "notes": [str], "fp32_op_types": [str]}``

``evaluate --parent P --candidate C [--validation VAL.npz]`` -> REPORT:
    ``{"samples", "size_bytes_parent", "size_bytes_candidate", "size_ratio",
    "latency_ms_parent", "latency_ms_candidate", "latency_ratio", "latency_batch_size",
    "accuracy_parent", "accuracy_candidate", "accuracy_drop_points", "top1_agreement",
    "max_abs_error", "nonfinite_outputs", "reference": "labels"|"outputs"|"parent"}``.
    Latency is the median wall time of one batch (of ``latency_batch_size`` samples),
    single-threaded, both models warmed up and interleaved in this process. Metrics that
    cannot be measured are null.

``profile --model M [--validation VAL.npz] [--golden-count 4] --bundle-out B.npz``
    Writes the check bundle (``tensors.check_bundle``: golden cases and the reference
    profile) to B.npz -> ``{"golden_cases": int, "golden_source":
    "validation"|"generated", "reference_profile": {"source": "validation"|"generated",
    "inputs": {name: HIST}, "outputs": {name: HIST}, "top1_confidence_mean": float|null,
    "class_distribution": [float]|null}}`` where HIST is ``{"bin_edges": [n+1 increasing
    floats], "fractions": [n floats summing to 1]}``.

Validation sets (``.npz``, loaded without pickles): one array per model input under its
name, first axis = samples; optionally ``labels`` (integer class indices) for accuracy,
or one array per model output under its name with reference outputs.
"""

from .errors import (
    BadValidationSetError,
    ConversionError,
    ConversionFailedError,
    ExternalDataEscapeError,
    FutureOpsetError,
    MalformedModelError,
    MissingDependencyError,
    SignatureMismatchError,
    TensorTooLargeError,
    UnsupportedDatatypeError,
    UnsupportedFormatError,
)
from .evaluate import EvaluationReport, evaluate
from .gate import GateDecision, GatePolicy, judge
from .inspection import ModelInfo, detect_format, inspect_model, open_model
from .onnx_checks import DEFAULT_MAX_TENSOR_BYTES
from .profile import MAX_GOLDEN_BYTES, TOLERANCES, Profile, profile_model
from .variants import MODES, VariantResult, make_variant

__all__ = [
    "DEFAULT_MAX_TENSOR_BYTES",
    "MAX_GOLDEN_BYTES",
    "MODES",
    "TOLERANCES",
    "BadValidationSetError",
    "ConversionError",
    "ConversionFailedError",
    "EvaluationReport",
    "ExternalDataEscapeError",
    "FutureOpsetError",
    "GateDecision",
    "GatePolicy",
    "MalformedModelError",
    "MissingDependencyError",
    "ModelInfo",
    "Profile",
    "SignatureMismatchError",
    "TensorTooLargeError",
    "UnsupportedDatatypeError",
    "UnsupportedFormatError",
    "VariantResult",
    "detect_format",
    "evaluate",
    "inspect_model",
    "judge",
    "make_variant",
    "open_model",
    "profile_model",
]
