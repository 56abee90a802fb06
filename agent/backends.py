"""The agent's door to the runtime backends of ``tensors``: their errors become the agent's here.

``load_backend`` opens a model file as an ``InferenceBackend`` whose every failure, when
loading and when running, is a ``ModelLoadError`` (reason ``model_load_failed``) with the
backend's message. The sandboxed check (``agent.update.sandbox_worker``) and the serving
path (``agent.serving``) both load through it, so a model is read the same way where it
is checked and where it serves. Only code that already runs under sandbox limits loads a
model that has not passed the sandboxed check (ARCHITECTURE.md §3).

Invariant: ``tensors`` errors are translated here, once, ``from`` the original; nothing
else in the agent catches them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import tensors
from tensors import Array, InferenceBackend, ModelFormat, RuntimeOptions, TensorSpec

from .errors import ConfigurationError, ModelLoadError

__all__ = ["AgentBackend", "load_backend", "physical_cores", "runtime_options"]

CPUINFO = Path("/proc/cpuinfo")


def physical_cores(cpuinfo: Path = CPUINFO, allowed_cpus: int | None = None) -> int:
    """Physical cores this process may run on: hyper-threads of one core count once, and
    the CPUs it may use (``allowed_cpus``, else its affinity mask: a container's cpuset)
    cap it. At least 1."""
    logical = allowed_cpus
    if logical is None and hasattr(os, "sched_getaffinity"):
        logical = len(os.sched_getaffinity(0))
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    cores = set()
    package = core = ""
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip() and core:
            cores.add((package, core))
            package = core = ""
    counted = len(cores) or os.cpu_count() or 1
    return max(1, min(counted, logical or counted))


def runtime_options(
    *, providers: tuple[str, ...], intra_op_threads: int | Literal["auto"]
) -> RuntimeOptions:
    """``RuntimeOptions`` from the agent's settings; ``ConfigurationError`` if they cannot work."""
    threads = physical_cores() if intra_op_threads == "auto" else intra_op_threads
    try:
        return RuntimeOptions(providers=providers, intra_op_threads=threads)
    except tensors.InvalidOptionsError as exc:
        raise ConfigurationError(str(exc)) from exc


def load_backend(
    path: Path, model_format: ModelFormat, options: RuntimeOptions | None = None
) -> AgentBackend:
    """Load ``path`` as ``model_format``; ``ModelLoadError`` if the runtime refuses it."""
    try:
        backend = tensors.load_backend(path, model_format, options)
    except tensors.TensorsError as exc:
        raise ModelLoadError(str(exc)) from exc
    return AgentBackend(backend)


class AgentBackend:
    """A ``tensors`` backend whose ``run`` raises ``ModelLoadError``; thread-safe like it."""

    __slots__ = ("_run", "inputs", "outputs", "platform", "runtime")

    def __init__(self, backend: InferenceBackend) -> None:
        self._run = backend.run
        self.runtime: str = backend.runtime
        self.platform: str = backend.platform
        self.inputs: tuple[TensorSpec, ...] = backend.inputs
        self.outputs: tuple[TensorSpec, ...] = backend.outputs

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        try:
            return self._run(feeds)
        except tensors.TensorsError as exc:
            raise ModelLoadError(str(exc)) from exc
