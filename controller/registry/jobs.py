"""Run converter jobs (``python -m converters …``) in a subprocess with limits.

Model files are untrusted input to parsers (ARCHITECTURE.md §3): every parse of an
uploaded model happens in a child process whose address space and CPU time are capped
before any model library is imported, with a wall-clock timeout on top. A crash, a kill
by a limit or a timeout becomes a ``JobError``; the converter's own refusal (exit 3)
becomes a ``ModelRejectedError`` with its reason. The API process never parses a model.

The child gets a minimal environment (``_child_environment``): an allow-list of what Python
and the numeric libraries need to run, never the controller's secrets
(``EDGEFLEET_KEY_PASSPHRASE``, database URLs, cloud credentials). A model that
exploited its parser would find nothing in its environment to steal.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import JobError, ModelRejectedError

__all__ = ["EXIT_REFUSED", "JobLimits", "run_converter"]

logger = logging.getLogger(__name__)

EXIT_REFUSED = 3
STDERR_TAIL_CHARS = 2000

# What a converter job may see of the controller's environment: where programs and
# temporary files are, the locale, the knobs of Python and the thread pools, and the
# converters' own two settings (neither a secret). An allow-list, so a secret added to
# the controller's environment tomorrow stays out too. PYTHONPATH stays: the job is our
# own code, found the way the controller found it.
_INHERITED_VARIABLES = frozenset(
    {
        "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
        "PYTHONPATH", "PYTHONHASHSEED", "PYTHONUTF8", "PYTHONIOENCODING",
        "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
        "LD_LIBRARY_PATH",
        "EDGEFLEET_MAX_TENSOR_BYTES", "EDGEFLEET_LOG_LEVEL",
    }
)  # fmt: skip
_INHERITED_PREFIXES = ("LC_",)

# Set the limits in the child before anything else is imported, then run the converter.
_BOOTSTRAP = (
    "import resource, runpy, sys\n"
    "memory, cpu = int(sys.argv[1]), int(sys.argv[2])\n"
    "resource.setrlimit(resource.RLIMIT_AS, (memory, memory))\n"
    "resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))\n"
    "sys.argv = ['converters', *sys.argv[3:]]\n"
    "runpy.run_module('converters', run_name='__main__', alter_sys=True)\n"
)


@dataclass(frozen=True)
class JobLimits:
    memory_bytes: int
    cpu_s: int
    wall_s: float


def run_converter(args: list[str], limits: JobLimits) -> dict[str, Any]:
    """Run ``python -m converters ARGS`` under ``limits`` and return its JSON answer."""
    command = [
        sys.executable,
        "-c",
        _BOOTSTRAP,
        str(limits.memory_bytes),
        str(limits.cpu_s),
        *args,
    ]
    started = time.monotonic()
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, so a timeout kills all of it
        env=_child_environment(os.environ),
    )
    try:
        stdout, stderr = process.communicate(timeout=limits.wall_s)
    except subprocess.TimeoutExpired as exc:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise JobError(f"converter job {args[0]} timed out after {limits.wall_s:.0f} s") from exc
    elapsed = time.monotonic() - started
    logger.info("converter %s exited %s after %.1f s", args[0], process.returncode, elapsed)
    return _interpret(args[0], process.returncode, stdout, stderr)


def _child_environment(parent: Mapping[str, str]) -> dict[str, str]:
    """The environment of a job: the allow-listed part of ``parent``, one thread by default."""
    inherited = {
        name: value
        for name, value in parent.items()
        if name in _INHERITED_VARIABLES or name.startswith(_INHERITED_PREFIXES)
    }
    return {"OMP_NUM_THREADS": "1", **inherited}


def _interpret(command: str, returncode: int, stdout: bytes, stderr: bytes) -> dict[str, Any]:
    tail = stderr.decode("utf-8", "replace")[-STDERR_TAIL_CHARS:]
    if returncode < 0:
        name = signal.Signals(-returncode).name
        raise JobError(
            f"converter job {command} was killed by {name} (memory or CPU limit?): {tail}"
        )
    if returncode not in (0, EXIT_REFUSED):
        raise JobError(f"converter job {command} crashed with exit code {returncode}: {tail}")
    try:
        answer = json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise JobError(f"converter job {command} printed no JSON answer: {tail}") from exc
    if not isinstance(answer, dict):
        raise JobError(f"converter job {command} answered {type(answer).__name__}, not an object")
    if returncode == EXIT_REFUSED:
        raise ModelRejectedError(str(answer.get("error", "refused")), str(answer.get("kind", "")))
    return answer
