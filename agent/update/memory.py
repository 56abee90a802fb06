"""How much memory this process holds, for the memory budget of a device's models.

Linux first (``/proc/self/statm``, the resident set now); elsewhere the peak resident
set from ``getrusage``, which can only overstate what is held: a budget check with it
refuses sooner, never later.
"""

from __future__ import annotations

import os
import resource
import sys

__all__ = ["peak_resident_bytes", "resident_bytes"]


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
