"""The sandboxed check's way into ``agent.runtimes``: load a model file, read its signature.

Only code that already runs under sandbox limits calls ``load_model`` on a model that
has not passed the sandboxed check (ARCHITECTURE.md §3). The backends themselves, and
the translation of runtime exceptions into ``ModelLoadError``, live in ``agent.runtimes``
so that a model is read the same way where it is checked and where it serves.
"""

from __future__ import annotations

from pathlib import Path

from .runtimes import (
    Array,
    InferenceBackend,
    ModelFormat,
    RuntimeOptions,
    TensorSignature,
    datatype_of_dtype,
    load_backend,
    numpy_dtype_of,
)

__all__ = [
    "Array",
    "LoadedModel",
    "TensorSignature",
    "datatype_of_dtype",
    "load_model",
    "numpy_dtype_of",
]

LoadedModel = InferenceBackend


def load_model(path: Path, model_format: ModelFormat, *, threads: int = 1) -> LoadedModel:
    """Load ``path`` as ``model_format`` on the CPU with ``threads`` threads."""
    return load_backend(path, model_format, RuntimeOptions(intra_op_threads=threads))
