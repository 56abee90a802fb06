"""A scripted fleet for planner tests: pure, deterministic, no clock and no broker.

Each device answers a deployment as its behaviour says, ``REPORT_DELAY_S`` after it was
assigned; a silent device never answers. ``drive`` runs the planner tick by tick against
the fleet and carries out its actions, keeping a log of every one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from controller.rollouts.core import (
    AssignDevices,
    CommandKind,
    DeviceOutcome,
    DeviceReport,
    DeviceView,
    EmitEvent,
    EventKind,
    FleetHealth,
    Observations,
    OperatorCommand,
    Plan,
    RollbackDevices,
    RolloutPolicy,
    RolloutState,
    parse_waves,
    plan,
)
from protocol import ReleaseRef

NEW = ReleaseRef(model="classifier", version=2, sha256="b" * 64)
OLD = ReleaseRef(model="classifier", version=1, sha256="a" * 64)
REPORT_DELAY_S = 30.0
TICK_S = 60.0
SOAK_S = 120.0
REPORT_TIMEOUT_S = 600.0
HEALTHY = FleetHealth(
    devices=5, requests=5000, error_rate=0.001, nonfinite_rate=0.0, p95_ms=10.0,
    confidence_mean=0.9, max_drift_psi=0.05, labeled=500, label_accuracy=0.9,
)  # fmt: skip


def policy(waves: str = "1,10%,50%,100%", **overrides: object) -> RolloutPolicy:
    settings: dict[str, object] = {"soak_s": SOAK_S, "report_timeout_s": REPORT_TIMEOUT_S}
    settings.update(overrides)
    return RolloutPolicy(waves=parse_waves(waves), **settings)  # type: ignore[arg-type]


def rollout(rollout_policy: RolloutPolicy | None = None) -> RolloutState:
    return RolloutState("r-1", NEW, OLD, rollout_policy or policy())


def device_id(index: int) -> str:
    return f"d{index:02d}"


class Behaviour(StrEnum):
    COMMIT = "commit"
    UNOBSERVED = "unobserved"
    ROLLBACK = "rollback"  # probation saw NaN outputs, say, and rolled back on the device
    FAIL = "fail"  # refused before activation
    SILENT = "silent"  # never reports: crashed, or went dark


_OUTCOME = {
    Behaviour.COMMIT: DeviceOutcome.COMMITTED,
    Behaviour.UNOBSERVED: DeviceOutcome.COMMITTED_UNOBSERVED,
    Behaviour.ROLLBACK: DeviceOutcome.ROLLED_BACK,
    Behaviour.FAIL: DeviceOutcome.FAILED,
}


@dataclass
class Device:
    device_id: str
    online: bool = True
    release: ReleaseRef | None = OLD
    behaviour: Behaviour = Behaviour.COMMIT


@dataclass
class Fleet:
    devices: dict[str, Device] = field(default_factory=dict)
    reports: dict[str, DeviceReport] = field(default_factory=dict)
    due: dict[str, tuple[float, DeviceOutcome]] = field(default_factory=dict)
    commands: list[OperatorCommand] = field(default_factory=list)
    new_health: FleetHealth | None = None
    control_health: FleetHealth | None = None
    assigned: list[str] = field(default_factory=list)  # every id of every AssignDevices
    rollbacks: list[tuple[str, ...]] = field(default_factory=list)
    events: list[EventKind] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        size: int,
        behaviours: Mapping[int, Behaviour] | None = None,
        offline: Iterable[int] = (),
    ) -> Fleet:
        fleet = cls()
        for index in range(size):
            fleet.join(index, online=index not in set(offline))
        for index, behaviour in (behaviours or {}).items():
            fleet.devices[device_id(index)].behaviour = behaviour
        return fleet

    def join(self, index: int, *, online: bool = True) -> None:
        self.devices[device_id(index)] = Device(device_id(index), online=online)

    def command(self, kind: CommandKind) -> None:
        self.commands.append(OperatorCommand(len(self.commands) + 1, kind))

    def observe(self, now_s: float) -> Observations:
        for name, (at_s, outcome) in sorted(self.due.items()):
            if at_s <= now_s:
                del self.due[name]
                self.reports[name] = DeviceReport(outcome, at_s)
                if outcome in (DeviceOutcome.COMMITTED, DeviceOutcome.COMMITTED_UNOBSERVED):
                    self.devices[name].release = NEW
        views = tuple(DeviceView(d.device_id, d.online, d.release) for d in self.devices.values())
        return Observations(
            devices=views,
            reports=dict(self.reports),
            new_health=self.new_health,
            control_health=self.control_health,
            commands=tuple(self.commands),
        )

    def carry_out(self, result: Plan, now_s: float) -> None:
        self.plans.append(result)
        for action in result.actions:
            if isinstance(action, AssignDevices):
                assert action.release == NEW
                for name in action.device_ids:
                    self.assigned.append(name)
                    behaviour = self.devices[name].behaviour
                    if behaviour is not Behaviour.SILENT:
                        self.due[name] = (now_s + REPORT_DELAY_S, _OUTCOME[behaviour])
            elif isinstance(action, RollbackDevices):
                assert action.to_release == OLD
                self.rollbacks.append(action.device_ids)
                for name in action.device_ids:
                    self.devices[name].release = OLD
            elif isinstance(action, EmitEvent):
                self.events.append(action.kind)


Script = Mapping[int, Callable[[Fleet], None]]


def drive(
    state: RolloutState,
    fleet: Fleet,
    *,
    ticks: int,
    start_s: float = 0.0,
    script: Script | None = None,
    restart_each_tick: bool = False,
) -> RolloutState:
    """Plan ``ticks`` times, ``TICK_S`` apart, carrying out each plan's actions.

    ``script[tick]`` changes the fleet (a command, a device joining) before that tick.
    With ``restart_each_tick`` a restarted controller plans again from the stored state
    with the same observations after each tick; that second plan must change nothing.
    """
    for tick in range(ticks):
        now_s = start_s + tick * TICK_S
        if script and tick in script:
            script[tick](fleet)
        observations = fleet.observe(now_s)
        result = plan(state, observations, now_s=now_s)
        fleet.carry_out(result, now_s)
        if restart_each_tick:
            again = plan(result.state, observations, now_s=now_s)
            assert [a for a in again.actions if not isinstance(a, EmitEvent)] == []
            assert again.state == result.state
        state = result.state
    return state
