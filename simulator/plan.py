"""The fleet plan: which device gets which profile and which faults, drawn from the seed.

Invariant: ``plan_fleet`` is a pure function of (scenario, seed, run tag); its random
draws happen in one fixed order from one ``random.Random(seed)``, so two runs with the
same seed build the same fleet and put the same faults on the same device indexes. Per
device randomness used while running (connection cuts) comes from a generator seeded
with (seed, device index), never from the shared one; the fleet's requests come from
one generator seeded with (seed, "workload") (``simulator.traffic``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .scenario import KILLABLE_STATES, FaultKind, ProfileSpec, Scenario

__all__ = ["DevicePlan", "FleetPlan", "plan_fleet"]


@dataclass(frozen=True)
class BrokerCut:
    at_s: float
    duration_s: float


@dataclass
class DevicePlan:
    index: int
    device_id: str
    profile: ProfileSpec
    # rollout index -> the update state the agent is killed in during that rollout.
    kills: dict[int, str] = field(default_factory=dict)
    corrupt_artifacts: bool = False
    # Cuts planned by a cut_broker fault, in seconds from the first rollout's start.
    broker_cuts: list[BrokerCut] = field(default_factory=list)

    def rng(self, seed: int, purpose: str) -> random.Random:
        return random.Random(f"{seed}/{self.index}/{purpose}")  # noqa: S311 - simulation


@dataclass
class FleetPlan:
    seed: int
    run_tag: str
    devices: list[DevicePlan]


def plan_fleet(scenario: Scenario, *, seed: int, run_tag: str) -> FleetPlan:
    rng = random.Random(seed)  # noqa: S311 - simulation, not security
    size = scenario.fleet.devices
    devices = [
        DevicePlan(index, f"{run_tag}-{index:05d}", profile)
        for index, profile in enumerate(_profiles(scenario.profiles, size, rng))
    ]
    faulted: set[int] = set()
    for fault in scenario.faults:
        candidates = [
            device
            for device in devices
            if device.index not in faulted
            and (fault.profile is None or device.profile.name == fault.profile)
        ]
        chosen = rng.sample(candidates, min(fault.count(size), len(candidates)))
        faulted.update(device.index for device in chosen)
        for device in chosen:
            if fault.kind is FaultKind.KILL_AT_STATE:
                assert fault.state is not None  # checked by FaultSpec
                device.kills[fault.rollout] = fault.state
            elif fault.kind is FaultKind.CORRUPT_ARTIFACT:
                device.corrupt_artifacts = True
            else:
                device.broker_cuts.append(BrokerCut(fault.at_s, fault.duration_s))
    # A profile's crash probability: one draw per device and rollout, in device order.
    for device in devices:
        for rollout in range(len(scenario.rollouts)):
            crash = rng.random() < device.profile.crash_probability
            state = rng.choice(KILLABLE_STATES)
            if crash and rollout not in device.kills:
                device.kills[rollout] = state
    return FleetPlan(seed, run_tag, devices)


def _profiles(profiles: list[ProfileSpec], size: int, rng: random.Random) -> list[ProfileSpec]:
    """Exactly ``round(share / total * size)`` devices per profile (the last takes the
    rest), in a seeded random order."""
    total = sum(profile.share for profile in profiles)
    chosen: list[ProfileSpec] = []
    for profile in profiles[:-1]:
        chosen += [profile] * min(size - len(chosen), round(profile.share / total * size))
    chosen += [profiles[-1]] * (size - len(chosen))
    rng.shuffle(chosen)
    return chosen
