"""How much memory this process holds, for the memory budget of a device's models.

Linux first (``/proc/self/statm``, the resident set now); elsewhere the peak resident
set from ``getrusage``, which can only overstate what is held: a budget check with it
refuses sooner, never later.
"""

from __future__ import annotations

import os
import resource
import sys

from protocol import Release

from ..errors import InsufficientMemoryError

__all__ = ["peak_resident_bytes", "resident_bytes", "verify_memory_budget"]


def resident_bytes() -> int:
    """The resident memory of this process now, in bytes."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_resident_bytes()


def peak_resident_bytes() -> int:
    """The highest resident memory this process has had, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak if sys.platform == "darwin" else peak * 1024


def verify_memory_budget(
    budget: int | None, release: Release, report: object, *, extra_bytes: int = 0
) -> None:
    """Refuse ``release`` when the agent's memory now, plus what it measured in the
    sandbox (its artifact's size at least) and ``extra_bytes``, exceeds ``budget``."""
    if budget is None:
        return
    # The sandbox measured the model's own footprint; without a report (a simulated
    # check), the artifact's size is the floor of what loading it takes.
    # (``SandboxReport.memory_bytes``, read by name: the sandbox imports this module.)
    measured = getattr(report, "memory_bytes", None)
    needed = measured if isinstance(measured, int) else 0
    needed = max(needed, release.artifact.length) + extra_bytes
    resident = resident_bytes()
    if resident + needed > budget:
        raise InsufficientMemoryError(
            f"{release.ref()} needs about {needed} bytes; the agent holds {resident} "
            f"with the models that serve, and the budget is {budget}"
        )
