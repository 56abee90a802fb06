"""The fleet's periodic work, from one task each per process rather than per device.

On a device, applications send requests on their own and the agent's own task rolls its
statistics window; a simulated device would need a task and a timer for each. Ten
thousand devices in one process cannot afford them (each sleeping task holds its
coroutine, its future and its timer), so:

- ``run_fleet_requests`` sends every device's requests from one task. The requests of
  the fleet are one Poisson stream at ``requests_per_s`` times the fleet's size, each
  request going to a device drawn uniformly: the same distribution as independent
  Poisson streams per device at ``requests_per_s`` (the superposition property). A
  request a device cannot serve (not running, no model) is still drawn, so the rate per
  serving device does not depend on the others. A slowed device's request runs in the
  default executor; while one runs, that device's next requests are skipped, as an
  application waiting for its answer would not have sent them.
- ``run_fleet_telemetry`` calls each running daemon's ``publish_telemetry`` once per
  ``stats_window_s``, the fleet spread evenly over the window (a burst of every
  device's batch at once would queue thousands of publishes at the same moment).

Both are simulator shortcuts: ``Shortcuts.names()`` lists them in the report.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from .workload import DigitsWorkload

__all__ = [
    "TELEMETRY_SLICES",
    "Reporting",
    "Requested",
    "run_fleet_requests",
    "run_fleet_telemetry",
    "telemetry_slice",
]

logger = logging.getLogger(__name__)

# Requests sent before the task yields to the event loop, when it is behind.
MAX_REQUESTS_PER_TURN = 200
# Parts of the fleet whose telemetry is rolled one after the other within a window.
TELEMETRY_SLICES = 100

Sleep = Callable[[float], Awaitable[None]]
_T = TypeVar("_T")


class Requested(Protocol):
    def request(self, workload: DigitsWorkload, elapsed_s: float) -> None: ...


class Reporting(Protocol):
    @property
    def device_id(self) -> str: ...

    def publish_telemetry(self) -> None: ...


async def run_fleet_requests(
    devices: Sequence[Requested],
    workload: DigitsWorkload,
    started_at: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Send the fleet's requests at the workload's rate until cancelled; ``started_at``
    is when the workload started, on ``clock``."""
    rate = workload.spec.requests_per_s * len(devices)
    if rate <= 0:
        return
    next_at = clock() + workload.next_delay_s(rate)
    while True:
        await sleep(max(next_at - clock(), 0.0))
        now = clock()
        sent = 0
        while next_at <= now and sent < MAX_REQUESTS_PER_TURN:
            devices[workload.pick(len(devices))].request(workload, now - started_at)
            next_at += workload.next_delay_s(rate)
            sent += 1


async def run_fleet_telemetry(
    devices: Sequence[Reporting],
    window_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Every ``window_s``, each device queues its telemetry, until cancelled; one slice
    of the fleet at a time (``telemetry_slice``)."""
    if not devices or not math.isfinite(window_s) or window_s <= 0:
        return
    slices = min(TELEMETRY_SLICES, len(devices))
    step_s = window_s / slices
    started = clock()
    turn = 0
    while True:
        turn += 1
        await sleep(max(started + turn * step_s - clock(), 0.0))
        for device in telemetry_slice(devices, turn):
            try:
                device.publish_telemetry()
            except Exception:  # one device's failure must not stop the fleet's telemetry
                logger.exception("device %s could not queue its telemetry", device.device_id)


def telemetry_slice(devices: Sequence[_T], turn: int) -> Sequence[_T]:
    """The devices whose telemetry is due at ``turn``: over any ``TELEMETRY_SLICES``
    turns in a row (fewer for a smaller fleet), every device exactly once."""
    slices = min(TELEMETRY_SLICES, len(devices))
    return devices[turn % slices :: slices]
