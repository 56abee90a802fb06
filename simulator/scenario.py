"""Scenario files: the simulated fleet, its workload, its faults and the rollouts to run.

A scenario is TOML, read into frozen pydantic models that validate themselves, so a typo
is an error naming the field, before any device starts. Every random choice the
simulator makes is drawn from one ``random.Random(seed)`` in a fixed order (see
``simulator.plan``), so the same scenario, seed and device count give the same fleet,
the same faults on the same devices, and the same outcome counts.

Example (``simulator/scenarios/demo.toml`` is a complete one)::

    [fleet]
    devices = 50
    stats_window_s = 2.0

    [[profiles]]
    name = "edge-box"
    share = 0.8
    speed_factor = 1.0

    [workload]
    requests_per_s = 4.0

    [[faults]]
    kind = "kill_at_state"
    devices = 3
    state = "probation"

    [[rollouts]]
    release = "digits:2"          # or "@good" / "@bad": releases the demo prepared
    waves = "1,100%"
    soak = "10s"
    expect = { status = "completed", committed = 50 }
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "FaultKind",
    "FaultSpec",
    "FleetSpec",
    "ProfileSpec",
    "RolloutSpec",
    "Scenario",
    "ScenarioError",
    "WorkloadSpec",
    "load_scenario",
]

# The update states an agent can be killed in (agent.update.machine's names).
KILLABLE_STATES = ("fetching", "verifying", "staged", "activating", "probation")


class ScenarioError(Exception):
    """A scenario file that cannot be read or does not describe a runnable scenario."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetSpec(_Spec):
    devices: int = Field(default=50, ge=1, le=100_000)
    labels: dict[str, str] = {"fleet": "sim"}
    # Statistics window of every agent: its telemetry period and probation's unit.
    stats_window_s: float = Field(default=2.0, gt=0)
    # How many agents start at once (enrollment and connection storms are bounded).
    start_concurrency: int = Field(default=64, ge=1)
    # "memory" keeps each device's outbox in memory instead of a SQLite file (a
    # shortcut for big fleets: a file costs three descriptors and a page cache).
    outbox: Literal["sqlite", "memory"] = "sqlite"
    # Devices downloading at once: each download is a socket, and the whole fleet shares
    # one process's file descriptors (the agent's own deadline still runs per download).
    downloads_at_once: int = Field(default=256, ge=1)


class ProfileSpec(_Spec):
    """A kind of device: a share of the fleet that behaves alike."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    share: float = Field(default=1.0, gt=0)
    # Inference takes this many times as long as on this machine.
    speed_factor: float = Field(default=1.0, ge=1.0, le=1000.0)
    # Expected broker connection cuts per device and minute (through the TCP proxy).
    network_flakiness: float = Field(default=0.0, ge=0.0, le=60.0)
    # Periods, in seconds from the start, when the device is switched off.
    offline: list[tuple[float, float]] = []
    # Free space the device has for models (the fetcher refuses what does not fit).
    disk_bytes: int = Field(default=1 << 30, ge=0)
    # Chance that one update is interrupted by a crash in a random update state.
    crash_probability: float = Field(default=0.0, ge=0.0, le=1.0)


class WorkloadSpec(_Spec):
    """What the applications on each device ask the model."""

    dataset: str = Field(default="digits", pattern=r"^digits$")
    requests_per_s: float = Field(default=2.0, ge=0.0, le=1000.0)
    # From ``drift_start_s`` on, inputs get Gaussian noise whose standard deviation grows
    # by ``drift_per_min`` per minute (features are scaled to [0, 1]).
    drift_start_s: float | None = Field(default=None, ge=0)
    drift_per_min: float = Field(default=0.0, ge=0.0)


class FaultKind(StrEnum):
    CUT_BROKER = "cut_broker"  # the TCP proxy cuts these devices' broker connections
    KILL_AT_STATE = "kill_at_state"  # the agent dies when its journal reaches ``state``
    CORRUPT_ARTIFACT = "corrupt_artifact"  # their artifact server flips bytes


class FaultSpec(_Spec):
    kind: FaultKind
    # Either a number of devices or a fraction of the fleet, chosen by the seed.
    devices: int | None = Field(default=None, ge=0)
    fraction: float | None = Field(default=None, ge=0.0, le=1.0)
    # cut_broker: when (seconds from the first rollout's start) and how long.
    at_s: float = Field(default=0.0, ge=0.0)
    duration_s: float = Field(default=5.0, ge=0.0)
    # kill_at_state: the update state, and in which rollout (index) it applies.
    state: str | None = None
    rollout: int = Field(default=0, ge=0)
    # Only devices of this profile (default: any). Faults never share a device.
    profile: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> FaultSpec:
        if (self.devices is None) == (self.fraction is None):
            raise ValueError("give exactly one of devices or fraction")
        if self.kind is FaultKind.KILL_AT_STATE and self.state not in KILLABLE_STATES:
            raise ValueError(f"state must be one of {', '.join(KILLABLE_STATES)}")
        return self

    def count(self, fleet_size: int) -> int:
        if self.devices is not None:
            return min(self.devices, fleet_size)
        return round((self.fraction or 0.0) * fleet_size)


class ExpectSpec(_Spec):
    """Outcome counts the rollout should end with; a mismatch fails the run."""

    status: str | None = None
    committed: int | None = None
    rolled_back: int | None = None
    failed: int | None = None


class RolloutSpec(_Spec):
    # "model:version", or "@name" for a release the caller (the demo) prepared.
    release: str
    waves: str = "1,100%"
    soak: str = "10s"
    min_reporting: str = "1"
    report_timeout: str = "2m"
    on_failure: str = "abort"
    require_observed: bool = False
    gates: dict[str, Any] = {}
    probation: dict[str, Any] = {}
    # Give up waiting for a final status after this long.
    timeout_s: float = Field(default=600.0, gt=0)
    # After the rollout ended, wait at most this long for devices still updating (one that
    # was reconnecting or rebooting when its wave started finishes later).
    settle_timeout_s: float = Field(default=120.0, gt=0)
    # Keep the fleet serving this long after the rollout settled, so the report shows
    # how the fleet behaves afterwards.
    observe_after_s: float = Field(default=0.0, ge=0)
    # Start together with the rollout before it (of another model: the controller runs
    # one unfinished rollout per model), rather than after it ended.
    with_previous: bool = False
    expect: ExpectSpec = ExpectSpec()


class Scenario(_Spec):
    name: str = "scenario"
    fleet: FleetSpec = FleetSpec()
    profiles: list[ProfileSpec] = [ProfileSpec(name="default")]
    workload: WorkloadSpec = WorkloadSpec()
    faults: list[FaultSpec] = []
    rollouts: list[RolloutSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        names = [profile.name for profile in self.profiles]
        if not names or len(set(names)) != len(names):
            raise ValueError("profiles need distinct names, and at least one")
        if self.rollouts and self.rollouts[0].with_previous:
            raise ValueError("the first rollout has no rollout before it to start with")
        for number, fault in enumerate(self.faults, start=1):
            if fault.profile is not None and fault.profile not in names:
                raise ValueError(f"fault {number} names the unknown profile {fault.profile!r}")
            if fault.rollout >= len(self.rollouts):
                raise ValueError(
                    f"fault {number} is for rollout {fault.rollout} (counted from 0), "
                    f"but the scenario has {len(self.rollouts)}"
                )
        return self


def load_scenario(path: Path, *, devices: int | None = None) -> Scenario:
    """Read and check ``path``; ``devices`` overrides the fleet size it names."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"cannot read the scenario {path}: {exc}") from exc
    if devices is not None:
        fleet = data.setdefault("fleet", {})
        if not isinstance(fleet, dict):
            raise ScenarioError(f"{path}: fleet must be a table, not {fleet!r}")
        fleet["devices"] = devices
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or '(top)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ScenarioError(f"{path}: {problems}") from exc
