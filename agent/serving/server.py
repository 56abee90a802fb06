"""One named model serving in process: load and warm a version, swap it in, infer.

``ModelServer`` is the in-process Python API that applications embedding the agent call,
and what the HTTP API (``agent.serving.http_api``) serves. Each ``LoadedVersion`` carries its
own backend and its own ``InferenceObserver``, so a new version's statistics never mix
with those of the version it replaced.

Invariants:
- a version serves only after it was loaded *and* warmed up (one zero input of its
  declared shape, free dimensions as 1), so the first real request pays no warm-up;
- ``swap`` is one reference assignment: a request reads the serving version once, at its
  start, and finishes on it even if a swap happens meanwhile. No request fails, waits for
  a lock, or mixes two versions because of a swap; a rollback is a swap back;
- every request a version ran or failed to run is recorded by that version's observer,
  once, with its latency (``time.perf_counter``); a runtime failure is recorded with
  ``error=True`` and no tensors. A request the version refused because it does not fit
  the signature (wrong names, datatypes, shapes: an ``InferenceRequestError``) is the
  client's mistake, not the model's: it is raised to the client and recorded by no one,
  so a misbehaving client can neither roll back a good model on probation nor count
  toward its ``min_requests``. A request made while nothing serves is not recorded
  either;
- a request a version answered is then offered to its ``tap``, if one is set (a shadow
  model, ``agent.shadow``): the answer is made before, and a failing tap is logged, so a
  tap can neither change nor fail the request;
- inputs are never cast or reshaped: a value of the wrong datatype or shape is refused
  with a message that names the input, what was given and what the model takes.

Errors (all ``AgentError``, defined in ``agent.errors``)::

    InferenceError                 inference_error
    ├── ModelNotReadyError         model_not_ready        no version is serving (HTTP 503)
    ├── UnknownModelError          unknown_model          no model of that name (HTTP 404)
    ├── InferenceFailedError       inference_failed       the runtime failed (HTTP 500)
    └── InferenceRequestError      bad_inference_request  does not fit the model (HTTP 400)
        ├── MalformedRequestError  malformed_request      not the protocol's JSON
        ├── InputNameError         input_names            missing, unknown or repeated inputs
        ├── OutputNameError        output_names           an output the model does not have
        ├── InputDatatypeError     input_datatype
        ├── InputShapeError        input_shape
        ├── InputDataError         input_data             data that does not fill the shape
        └── RequestTooLargeError   request_too_large      (HTTP 413)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, Protocol

import numpy as np

from tensors import (
    Array,
    InferenceBackend,
    ModelFormat,
    RuntimeOptions,
    TensorSpec,
    numpy_dtype_of,
    reported_datatype,
)

from ..backends import load_backend
from ..errors import (
    InferenceFailedError,
    InferenceRequestError,
    InputDatatypeError,
    InputNameError,
    InputShapeError,
    ModelLoadError,
    ModelNotReadyError,
)

__all__ = [
    "WARMUP_RUNS",
    "BackendLoader",
    "InferenceObserver",
    "LoadedVersion",
    "ModelServer",
    "ModelSignature",
    "RequestTap",
    "file_version",
]

logger = logging.getLogger(__name__)

WARMUP_RUNS = 2


# (model file, its format, runtime options) -> a loaded backend; raises ModelLoadError.
BackendLoader = Callable[[Path, ModelFormat, RuntimeOptions], InferenceBackend]


class InferenceObserver(Protocol):
    """Told about every request one version ran; called from many threads at once.

    ``record`` must be quick and must never modify the arrays. ``inputs`` are the
    caller's, who may reuse them once the request returns: copy them to keep them.
    ``outputs`` are fresh arrays from the runtime, handed to the caller as they are: they
    may be kept by reference for a while (``agent.stats.recorder.StatsRecorder`` measures them in
    batches), so callers should not modify returned outputs in place.
    """

    def record(
        self,
        *,
        latency_s: float,
        inputs: Mapping[str, Array] | None,
        outputs: Mapping[str, Array] | None,
        error: bool,
    ) -> None: ...


class RequestTap(Protocol):
    """Offered each request a version answered, after its answer is made (a shadow).

    Called from many threads at once; must return at once and never modify the arrays.
    """

    def offer(self, inputs: Mapping[str, Array], outputs: Mapping[str, Array]) -> None: ...


@dataclass(frozen=True)
class ModelSignature:
    """What a loaded model takes and gives, as its runtime reports it."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def file_version(path: Path) -> str:
    """A version name for a bare model file: ``sha256-`` and the first 12 hex digits."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return f"sha256-{digest.hexdigest()[:12]}"


def _show(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


class LoadedVersion:
    """One version of a model, loaded and warmed up, with its own observer."""

    __slots__ = (
        "_backend",
        "_checks",
        "_format",
        "_name",
        "_observer",
        "_path",
        "_run",
        "_signature",
        "_tap",
        "_version",
        "_warm_latency_s",
    )

    def __init__(
        self,
        name: str,
        version: str,
        *,
        path: Path,
        model_format: ModelFormat,
        backend: InferenceBackend,
        observer: InferenceObserver | None,
    ) -> None:
        self._name = name
        self._version = version
        self._path = path
        self._format: ModelFormat = model_format
        self._signature = ModelSignature(backend.inputs, backend.outputs)
        self._backend = backend
        self._run = backend.run
        self._observer = observer
        self._tap: RequestTap | None = None
        self._warm_latency_s = float("inf")
        for spec in backend.inputs:
            if not spec.is_oip:  # the runtime's own type string: no numpy dtype to check
                raise ModelLoadError(
                    f"{path.name} has an input of datatype {spec.datatype}, which cannot be served"
                )
        self._checks = tuple(
            (
                spec.name,
                numpy_dtype_of(spec.datatype),
                len(spec.shape),
                tuple((axis, dim) for axis, dim in enumerate(spec.shape) if dim != -1),
                spec,
            )
            for spec in backend.inputs
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def path(self) -> Path:
        return self._path

    @property
    def format(self) -> ModelFormat:
        return self._format

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    @property
    def runtime(self) -> str:
        return self._backend.runtime

    @property
    def platform(self) -> str:
        return self._backend.platform

    @property
    def observer(self) -> InferenceObserver | None:
        return self._observer

    @property
    def warm_latency_s(self) -> float:
        """How long the last warm-up run took (inf before any): a hint of its speed."""
        return self._warm_latency_s

    def __repr__(self) -> str:
        return f"LoadedVersion({self.name!r}, {self.version!r}, {self.runtime!r})"

    def warm_up(self, runs: int = WARMUP_RUNS) -> None:
        """Run a zero input of the declared shape (free dimensions as 1), unrecorded."""
        feeds = {
            name: np.zeros(tuple(1 if dim == -1 else dim for dim in spec.shape), dtype=dtype)
            for name, dtype, _, _, spec in self._checks
        }
        for _ in range(runs):
            started = time.perf_counter()
            self._run(feeds)
            self._warm_latency_s = time.perf_counter() - started

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Check ``inputs`` against the signature, run them, record the request.

        A request that does not fit is refused with an ``InferenceRequestError`` and not
        recorded; the outputs are fresh arrays (see ``InferenceObserver`` on keeping them).
        """
        started = time.perf_counter()
        try:
            self.verify_inputs(inputs)
            outputs = self._run(inputs)
        except InferenceRequestError as exc:
            # The client's mistake, not the model's: refused, logged, never recorded.
            logger.debug("%r refused a request: %s", self, exc)
            raise
        except ModelLoadError as exc:
            self._record(time.perf_counter() - started, None, None, error=True)
            raise InferenceFailedError(f"model {self.name!r} {self.version}: {exc}") from exc
        latency_s = time.perf_counter() - started
        self._record(latency_s, inputs, outputs, error=False)
        tap = self._tap
        if tap is not None:
            try:
                tap.offer(inputs, outputs)
            except Exception:  # a shadow must never fail the request it copies
                logger.exception("the request tap of %r failed", self)
        return outputs

    def tap(self, tap: RequestTap | None) -> None:
        """Hand every request this version answers to ``tap`` too (None: stop)."""
        self._tap = tap

    def _record(
        self,
        latency_s: float,
        inputs: Mapping[str, Array] | None,
        outputs: Mapping[str, Array] | None,
        *,
        error: bool,
    ) -> None:
        observer = self._observer
        if observer is None:
            return
        try:
            observer.record(latency_s=latency_s, inputs=inputs, outputs=outputs, error=error)
        except Exception:
            # Statistics must never fail the request they describe.
            logger.exception("the statistics observer of %r failed", self)

    def verify_inputs(self, inputs: Mapping[str, Array]) -> None:
        """Raise an ``InferenceRequestError`` unless ``inputs`` fit the signature exactly."""
        # Plain loops and no sets: this runs on every request, and a model of a few
        # microseconds must not pay more for the check than for the inference.
        if len(inputs) != len(self._checks):
            self._refuse_names(inputs)
        for name, dtype, rank, fixed, spec in self._checks:
            value = inputs.get(name)
            if value is None and name not in inputs:
                self._refuse_names(inputs)
            if not isinstance(value, np.ndarray):
                raise InputDatatypeError(
                    f"input {name!r} is a {type(value).__name__}, not a numpy array"
                )
            if value.dtype is not dtype and value.dtype != dtype:
                raise InputDatatypeError(
                    f"input {name!r} is {reported_datatype(value.dtype)}, model "
                    f"{self.name!r} takes {spec.datatype}"
                )
            shape = value.shape
            fits = len(shape) == rank
            for axis, dim in fixed:
                if not fits or shape[axis] != dim:
                    fits = False
                    break
            if not fits:
                raise InputShapeError(
                    f"input {name!r} has shape {_show(shape)}, model {self.name!r} takes "
                    f"{_show(spec.shape)} (-1: any size)"
                )
            if not value.size:
                # Runtimes answer an empty batch with their own error: the client's, not
                # the model's (it was a 500).
                raise InputShapeError(f"input {name!r} has no values (shape {_show(shape)})")

    def _refuse_names(self, inputs: Mapping[str, Array]) -> NoReturn:
        given = sorted(inputs)
        wanted = sorted(name for name, *_ in self._checks)
        raise InputNameError(f"the inputs are {given}, model {self.name!r} takes {wanted}")


class ModelServer:
    """The serving version of one named model, swapped atomically.

    ``infer`` may be called from any number of threads; ``load``, ``swap`` and ``unload``
    from any thread too (swaps are serialized among themselves, never with requests).
    """

    def __init__(
        self,
        name: str,
        *,
        options: RuntimeOptions | None = None,
        load_backend: BackendLoader = load_backend,
    ) -> None:
        self.name = name
        self.options = options or RuntimeOptions()
        # The simulator passes one that shares a session among many simulated devices.
        self._load_backend = load_backend
        self._current: LoadedVersion | None = None
        self._swap_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> LoadedVersion | None:
        return self._current

    def load(
        self,
        path: Path,
        fmt: ModelFormat,
        *,
        version: str,
        observer: InferenceObserver | None = None,
    ) -> LoadedVersion:
        """Load ``path`` and warm it up; it does not serve until ``swap``.

        Blocks for as long as loading takes: call it from a worker thread in async code.
        """
        backend = self._load_backend(path, fmt, self.options)
        loaded = LoadedVersion(
            self.name, version, path=path, model_format=fmt, backend=backend, observer=observer
        )
        try:
            loaded.warm_up()
        except ModelLoadError as exc:
            raise ModelLoadError(f"{path.name} failed its warm-up run: {exc}") from exc
        logger.info("loaded %s %s (%s)", self.name, version, loaded.runtime)
        return loaded

    def swap(self, loaded: LoadedVersion) -> LoadedVersion | None:
        """Make ``loaded`` serve; return the version it replaced (None if none served)."""
        if loaded.name != self.name:
            raise ValueError(f"a version of {loaded.name!r} cannot serve as {self.name!r}")
        with self._swap_lock:
            previous, self._current = self._current, loaded
        logger.info(
            "%s now serves %s (was %s)",
            self.name,
            loaded.version,
            previous.version if previous else "nothing",
        )
        return previous

    def unload(self) -> LoadedVersion | None:
        """Stop serving; requests already running finish. Returns what served."""
        with self._swap_lock:
            previous, self._current = self._current, None
        return previous

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run ``inputs`` on the serving version, from any thread."""
        loaded = self._current
        if loaded is None:
            raise ModelNotReadyError(f"model {self.name!r} has no version serving")
        return loaded.infer(inputs)

    async def infer_async(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """``infer`` in the event loop's default thread pool."""
        return await asyncio.get_running_loop().run_in_executor(None, self.infer, inputs)
