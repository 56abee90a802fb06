"""The fleet's one request task and one telemetry task (``simulator.traffic``), on an
injected clock: the rate per device, every device reached, one failure isolated."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from simulator.scenario import WorkloadSpec
from simulator.traffic import (
    TELEMETRY_SLICES,
    run_fleet_requests,
    run_fleet_telemetry,
    telemetry_slice,
)
from simulator.workload import DigitsWorkload


class FakeTime:
    """A clock that moves only when the task sleeps; it ends the run at ``end_s``."""

    def __init__(self, end_s: float) -> None:
        self.now_s = 0.0
        self.end_s = end_s

    def clock(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        self.now_s += delay_s
        if self.now_s > self.end_s:
            raise asyncio.CancelledError


class Device:
    def __init__(self, device_id: str, *, fails: bool = False) -> None:
        self.device_id = device_id
        self.fails = fails
        self.requests: list[float] = []
        self.reports = 0

    def request(self, workload: DigitsWorkload, elapsed_s: float) -> None:
        self.requests.append(elapsed_s)

    def publish_telemetry(self) -> None:
        self.reports += 1
        if self.fails:
            raise RuntimeError("the outbox is broken")


def run(coroutine: object) -> None:
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(coroutine)  # type: ignore[arg-type]


def test_each_device_gets_requests_at_the_workloads_rate() -> None:
    devices = [Device(f"d{i}") for i in range(50)]
    workload = DigitsWorkload(WorkloadSpec(requests_per_s=2.0), random.Random(7))
    fake = FakeTime(end_s=200.0)

    run(run_fleet_requests(devices, workload, 0.0, clock=fake.clock, sleep=fake.sleep))

    counts = [len(device.requests) for device in devices]
    # 400 expected per device (Poisson, sd 20) and 20 000 in all (sd 141).
    assert sum(counts) == pytest.approx(50 * 2.0 * 200.0, rel=0.03)
    assert all(300 < count < 500 for count in counts)
    times = [t for device in devices for t in device.requests]
    assert min(times) >= 0.0
    assert max(times) <= 200.0


def test_a_workload_without_requests_sends_none() -> None:
    devices = [Device("d0")]
    workload = DigitsWorkload(WorkloadSpec(requests_per_s=0.0), random.Random(7))
    fake = FakeTime(end_s=10.0)

    asyncio.run(run_fleet_requests(devices, workload, 0.0, clock=fake.clock, sleep=fake.sleep))

    assert devices[0].requests == []


@pytest.mark.parametrize("fleet", [1, 7, TELEMETRY_SLICES, 3 * TELEMETRY_SLICES + 1])
def test_every_device_is_in_exactly_one_slice_of_a_window(fleet: int) -> None:
    devices = list(range(fleet))
    slices = min(TELEMETRY_SLICES, fleet)

    seen = Counter(d for turn in range(5, 5 + slices) for d in telemetry_slice(devices, turn))

    assert seen == Counter(devices)


def test_each_device_reports_once_per_window_and_a_failing_one_stops_nobody() -> None:
    devices = [Device(f"d{i}", fails=i == 3) for i in range(250)]
    fake = FakeTime(end_s=10.0 * 6 + 0.05)  # six windows and half a slice

    run(run_fleet_telemetry(devices, 10.0, clock=fake.clock, sleep=fake.sleep))

    assert {device.reports for device in devices} == {6}
