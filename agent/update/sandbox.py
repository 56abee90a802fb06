"""The sandboxed check of a model before activation (ARCHITECTURE.md §3, §5).

``check_model`` runs ``agent.update.sandbox_worker`` in a child process of its own session,
passes it the job on stdin and reads its one JSON answer from stdout. The agent process
never parses a model that has not passed this check.

Invariants:
- the child's address space (``RLIMIT_AS``) and CPU time (``RLIMIT_CPU``) are capped,
  core dumps and file writes are off, before any model library is imported: the limits are
  set by a ``-c`` bootstrap that only then runs the worker with ``runpy``;
- the child runs isolated (``python -I``): neither the environment nor the current
  directory can put modules on its path;
- the child's environment is an allow-list (paths, locale, temporary directory), never
  the agent's whole environment: a model that exploits its runtime finds no secret there;
- a wall-clock timeout kills the child's whole process group;
- every way the child can fail becomes a ``ModelCheckError``: its own refusal (exit 3)
  keeps the worker's reason code; a crash, a kill by a limit, a timeout or an answer that
  is not a report becomes ``SandboxKilledError``. The parent never fails with the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import protocol

from ..errors import (
    CheckBundleError,
    ConfigurationError,
    GoldenMismatchError,
    LatencyBudgetError,
    ModelCheckError,
    ModelLoadError,
    NonFiniteOutputError,
    SandboxKilledError,
    SignatureMismatchError,
)
from .sandbox_worker import EXIT_REFUSED

__all__ = [
    "TIMED_RUNS",
    "WARMUP_RUNS",
    "SandboxLimits",
    "SandboxReport",
    "check_model",
]

logger = logging.getLogger(__name__)

TIMED_RUNS = 20
WARMUP_RUNS = 3
MAX_ANSWER_BYTES = 64 * 1024
STDERR_TAIL_CHARS = 2000
_WORKER_MODULE = "agent.update.sandbox_worker"
# What the child may see of the agent's environment; an allow-list, so no secret (the
# enrollment token, a passphrase, cloud credentials) ever reaches a model's parser.
# LD_LIBRARY_PATH stays for runtimes and delegates installed outside the system paths.
_INHERITED_VARIABLES = frozenset(
    {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH"}
)
_INHERITED_PREFIXES = ("LC_",)
# Where the ``agent`` package lives, so ``python -I`` finds it from a source checkout too.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)

# Limits first, imports after. The hard limits are lowered too, so the child cannot lift
# them again; a parent already under a lower hard limit keeps it.
_BOOTSTRAP = """\
import resource, runpy, sys
memory_bytes, cpu_s, package_root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def cap(kind, soft, hard):
    current = resource.getrlimit(kind)[1]
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(kind, (soft, hard))

cap(resource.RLIMIT_AS, memory_bytes, memory_bytes)
cap(resource.RLIMIT_CPU, cpu_s, cpu_s + 1)
cap(resource.RLIMIT_CORE, 0, 0)
cap(resource.RLIMIT_FSIZE, 0, 0)
sys.dont_write_bytecode = True
sys.path.append(package_root)
sys.argv = [sys.argv[4]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""

_REFUSALS: dict[str, type[ModelCheckError]] = {
    cls.reason: cls
    for cls in (
        ModelCheckError,
        CheckBundleError,
        ModelLoadError,
        SignatureMismatchError,
        GoldenMismatchError,
        NonFiniteOutputError,
        LatencyBudgetError,
        SandboxKilledError,
    )
}
_SIGNAL_CAUSES = {
    signal.SIGKILL: "killed (the memory limit, or the wall-clock timeout)",
    signal.SIGXCPU: "over its CPU-time limit",
    signal.SIGSEGV: "crashed",
    signal.SIGABRT: "aborted (often an allocation over the memory limit)",
}


@dataclass(frozen=True)
class SandboxLimits:
    """What the check may use: address space, CPU time, and time on the clock."""

    memory_bytes: int
    cpu_s: int
    wall_s: float

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0 or self.cpu_s <= 0 or not self.wall_s > 0:
            raise ConfigurationError(f"sandbox limits must be positive: {self}")


@dataclass(frozen=True)
class SandboxReport:
    """What the check measured on a model that passed it."""

    golden_cases: int
    # What loading and running the model added to the child's peak resident memory.
    memory_bytes: int
    latency_ms_p50: float
    latency_ms_max: float
    runtime: str


async def check_model(
    model_path: Path,
    release: protocol.Release,
    *,
    check_bundle: Path,
    latency_budget_ms: float | None,
    limits: SandboxLimits,
    timed_runs: int = TIMED_RUNS,
) -> SandboxReport:
    """Load and test ``model_path`` in a limited child process; raise a ``ModelCheckError``.

    ``check_bundle`` is the release's check bundle, already verified against the hash
    the release signs: the child runs its golden cases.
    """
    job = {
        "model_path": os.fspath(model_path.resolve()),
        "format": release.artifact.format,
        "inputs": [spec.model_dump(mode="json") for spec in release.inputs],
        "outputs": [spec.model_dump(mode="json") for spec in release.outputs],
        "check_bundle_path": os.fspath(check_bundle.resolve()),
        "latency_budget_ms": latency_budget_ms,
        "warmup_runs": WARMUP_RUNS,
        "timed_runs": timed_runs,
    }
    what = f"{release.model} v{release.version} ({model_path.name})"
    started = time.monotonic()
    returncode, stdout, stderr = await _run_worker(json.dumps(job).encode(), limits, what)
    logger.info(
        "sandboxed check of %s exited %s after %.1f s", what, returncode, time.monotonic() - started
    )
    return _interpret(what, returncode, stdout, stderr, limits)


async def _run_worker(job: bytes, limits: SandboxLimits, what: str) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-c",
        _BOOTSTRAP,
        str(limits.memory_bytes),
        str(limits.cpu_s),
        _PACKAGE_ROOT,
        _WORKER_MODULE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, so a timeout kills all of it
        env=_child_environment(),
    )
    try:
        # asyncio.timeout, not wait_for, which can lose a cancellation on Python 3.11.
        async with asyncio.timeout(limits.wall_s):
            stdout, stderr = await process.communicate(job)
    except TimeoutError as exc:
        _kill_group(process.pid)
        await process.wait()
        raise SandboxKilledError(
            f"the sandboxed check of {what} did not finish within {limits.wall_s:g} s "
            "and was killed"
        ) from exc
    except BaseException:
        # Cancelled (the agent is stopping): leave no model check running behind us.
        _kill_group(process.pid)
        with contextlib.suppress(ProcessLookupError):
            await asyncio.shield(process.wait())
        raise
    assert process.returncode is not None  # communicate() waited for the exit
    return process.returncode, stdout, stderr


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _child_environment() -> dict[str, str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name in _INHERITED_VARIABLES or name.startswith(_INHERITED_PREFIXES)
    }
    # One thread per pool: predictable memory, steadier timings, like a small device.
    return {
        **inherited,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _interpret(
    what: str, returncode: int, stdout: bytes, stderr: bytes, limits: SandboxLimits
) -> SandboxReport:
    tail = stderr.decode("utf-8", "replace")[-STDERR_TAIL_CHARS:].strip()
    if returncode < 0:
        signum = signal.Signals(-returncode)
        cause = _SIGNAL_CAUSES.get(signum, "killed")
        raise SandboxKilledError(
            f"the sandboxed check of {what} was {cause}: {signum.name} "
            f"(limits: {limits.memory_bytes} bytes of memory, {limits.cpu_s} s of CPU)"
            + (f"; stderr: {tail}" if tail else "")
        )
    if returncode not in (0, EXIT_REFUSED):
        raise SandboxKilledError(
            f"the sandboxed check of {what} crashed with exit code {returncode}"
            + (f"; stderr: {tail}" if tail else "")
        )
    answer = _parse_answer(what, stdout)
    if returncode == EXIT_REFUSED:
        error_class = _REFUSALS.get(str(answer.get("reason")), ModelCheckError)
        raise error_class(f"{what}: {answer.get('error', 'refused')}")
    golden_cases, memory_bytes, p50_ms, max_ms, runtime = (
        answer.get(key)
        for key in ("golden_cases", "memory_bytes", "latency_ms_p50", "latency_ms_max", "runtime")
    )
    if not (
        type(golden_cases) is int
        and type(memory_bytes) is int
        and memory_bytes >= 0
        and _is_finite_number(p50_ms)
        and _is_finite_number(max_ms)
        and isinstance(runtime, str)
    ):
        raise SandboxKilledError(f"the sandboxed check of {what} answered no report: {answer}")
    return SandboxReport(
        golden_cases=golden_cases,
        memory_bytes=memory_bytes,
        latency_ms_p50=float(p50_ms),
        latency_ms_max=float(max_ms),
        runtime=runtime,
    )


def _parse_answer(what: str, stdout: bytes) -> dict[str, Any]:
    if len(stdout) > MAX_ANSWER_BYTES:
        raise SandboxKilledError(
            f"the sandboxed check of {what} answered {len(stdout)} bytes, "
            f"more than {MAX_ANSWER_BYTES}"
        )
    try:
        answer = json.loads(stdout)
    except ValueError as exc:
        raise SandboxKilledError(f"the sandboxed check of {what} answered no JSON") from exc
    if not isinstance(answer, dict):
        raise SandboxKilledError(
            f"the sandboxed check of {what} answered a {type(answer).__name__}, not an object"
        )
    return answer


def _is_finite_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
