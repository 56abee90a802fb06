"""edgefleet's tensors: the datatype table, the runtime backends and the profile rules.

One home for what the agent, the converters and the simulator all need to agree on
(ARCHITECTURE.md §2): how an Open Inference Protocol datatype is spelled in numpy, ONNX
Runtime and LiteRT (``datatypes``, ``spec``); how a model file is loaded and run
(``backend``, ``onnx_backend``, ``litert_backend``, ``loading``); and how outputs are
profiled (``profile``: histogram bins, which output holds class probabilities, PSI); and
how a release's golden cases and reference profile travel (``check_bundle``, an ``.npz``,
whose ``.npy`` headers ``npz_headers`` checks before numpy allocates what they declare).

It imports ``protocol`` and numpy, and the runtimes lazily; it does no I/O beyond reading
the model or bundle file it is handed. ``datatypes``, ``spec`` and ``profile`` are pure. Errors are
``TensorsError`` leaves (``errors``); callers translate them into their own at their
boundary. This namespace is the public API; the submodules are its implementation.
"""

from .accuracy import MIN_LABELED, Z_ONE_SIDED_99, AccuracyDrop, accuracy_drop
from .backend import CPU_PROVIDER, Array, InferenceBackend, ModelFormat, RuntimeOptions
from .check_bundle import (
    CheckBundle,
    GoldenCase,
    read_check_bundle,
    read_reference_profile,
    write_check_bundle,
)
from .datatypes import (
    DATATYPE_BYTES,
    FLOAT_DATATYPES,
    OIP_DATATYPES,
    Datatype,
    datatype_of_numpy,
    datatype_of_ort,
    numpy_dtype_of,
    ort_type_of,
    reported_datatype,
)
from .errors import (
    CheckBundleError,
    InvalidOptionsError,
    ModelRefusedError,
    RunFailedError,
    RuntimeMissingError,
    TensorsError,
    TensorTooLargeError,
    UnsupportedDatatypeError,
)
from .litert_backend import LiteRtBackend, load_interpreter_class
from .loading import import_runtime, installed_runtimes, load_backend
from .npz_headers import MAX_NPY_HEADER_BYTES, UnsafeNpyError, verify_npz_members
from .onnx_backend import OnnxBackend
from .profile import (
    HISTOGRAM_BINS,
    MAX_DRIFT_PIXELS,
    MAX_FEATURE_HISTOGRAMS,
    MIN_DRIFT_REQUESTS,
    MIN_DRIFT_VALUES,
    PROBABILITY_SLACK,
    PSI_EPSILON,
    ReferenceBins,
    are_class_probabilities,
    drift_sample,
    feature_axis,
    feature_histograms,
    feature_key,
    histogram,
    population_stability_index,
    split_feature_key,
)
from .samples import (
    DATASET_FIELDS,
    INPUT_PREFIX,
    META_KEY,
    OUTPUT_PREFIX,
    Dataset,
    Sample,
    SampleFormatError,
    dataset_of,
    read_sample,
    write_sample,
)
from .spec import TensorSpec, declared_bytes

__all__ = [
    "CPU_PROVIDER",
    "DATASET_FIELDS",
    "DATATYPE_BYTES",
    "FLOAT_DATATYPES",
    "HISTOGRAM_BINS",
    "INPUT_PREFIX",
    "MAX_DRIFT_PIXELS",
    "MAX_FEATURE_HISTOGRAMS",
    "MAX_NPY_HEADER_BYTES",
    "META_KEY",
    "MIN_DRIFT_REQUESTS",
    "MIN_DRIFT_VALUES",
    "MIN_LABELED",
    "OIP_DATATYPES",
    "OUTPUT_PREFIX",
    "PROBABILITY_SLACK",
    "PSI_EPSILON",
    "Z_ONE_SIDED_99",
    "AccuracyDrop",
    "Array",
    "CheckBundle",
    "CheckBundleError",
    "Dataset",
    "Datatype",
    "GoldenCase",
    "InferenceBackend",
    "InvalidOptionsError",
    "LiteRtBackend",
    "ModelFormat",
    "ModelRefusedError",
    "OnnxBackend",
    "ReferenceBins",
    "RunFailedError",
    "RuntimeMissingError",
    "RuntimeOptions",
    "Sample",
    "SampleFormatError",
    "TensorSpec",
    "TensorTooLargeError",
    "TensorsError",
    "UnsafeNpyError",
    "UnsupportedDatatypeError",
    "accuracy_drop",
    "are_class_probabilities",
    "dataset_of",
    "datatype_of_numpy",
    "datatype_of_ort",
    "declared_bytes",
    "drift_sample",
    "feature_axis",
    "feature_histograms",
    "feature_key",
    "histogram",
    "import_runtime",
    "installed_runtimes",
    "load_backend",
    "load_interpreter_class",
    "numpy_dtype_of",
    "ort_type_of",
    "population_stability_index",
    "read_check_bundle",
    "read_reference_profile",
    "read_sample",
    "reported_datatype",
    "split_feature_key",
    "verify_npz_members",
    "write_check_bundle",
    "write_sample",
]
