"""Whole rollouts as tables: a scripted fleet, the planner tick by tick, what happened.

Every row also plans a second time after each tick from the stored state with the same
observations, as a restarted controller would: that replay must assign nothing again.
Defaults (``fleet.py``): waves 1,10%,50%,100%; soak 120 s; report timeout 600 s;
devices report 30 s after they are assigned; a tick every 60 s.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from controller.rollouts.core import (
    EventKind,
    FleetHealth,
    OnFailure,
    RolloutPolicy,
    RolloutStatus,
    plan,
)
from tests.controller.rollouts.core.fleet import (
    HEALTHY,
    Behaviour,
    Fleet,
    device_id,
    drive,
    policy,
    rollout,
)

WS, WP, GF = EventKind.WAVE_STARTED, EventKind.WAVE_PASSED, EventKind.GATE_FAILED
PAUSED, ABORTED = EventKind.ROLLOUT_PAUSED, EventKind.ROLLOUT_ABORTED
COMPLETED = EventKind.ROLLOUT_COMPLETED
FOUR_WAVES = [WS, WP] * 4 + [COMPLETED]


def ids(*indexes: int | range) -> list[str]:
    out: list[str] = []
    for item in indexes:
        out.extend(device_id(i) for i in (item if isinstance(item, range) else [item]))
    return out


@dataclass(frozen=True)
class Scenario:
    size: int
    status: RolloutStatus
    assigned: list[str]
    rollbacks: list[list[str]]
    events: list[EventKind]
    behaviours: dict[int, Behaviour] = field(default_factory=dict)
    policy: RolloutPolicy = field(default_factory=policy)
    offline: tuple[int, ...] = ()
    new_health: FleetHealth | None = None
    control_health: FleetHealth | None = None
    ticks: int = 30


SCENARIOS = {
    "happy_path_20_devices_4_waves": Scenario(
        20, RolloutStatus.COMPLETED, ids(range(20)), [], FOUR_WAVES,
        new_health=HEALTHY, control_health=HEALTHY,
    ),
    "canary_rolls_back_abort_orders_the_updated_back": Scenario(
        20, RolloutStatus.ABORTED, ids(0, 1, 2), [ids(0, 2)], [WS, GF, ABORTED],
        behaviours={1: Behaviour.ROLLBACK}, policy=policy("3,50%,100%"),
    ),
    "canary_rolls_back_pause_policy_keeps_everything": Scenario(
        20, RolloutStatus.PAUSED, ids(0, 1, 2), [], [WS, GF, PAUSED],
        behaviours={1: Behaviour.ROLLBACK},
        policy=policy("3,50%,100%", on_failure=OnFailure.PAUSE),
    ),
    "canary_refuses_the_release_nothing_to_roll_back": Scenario(
        20, RolloutStatus.ABORTED, ids(0), [], [WS, GF, ABORTED], behaviours={0: Behaviour.FAIL},
    ),
    "silent_canary_counts_as_failed_after_the_timeout": Scenario(
        20, RolloutStatus.ABORTED, ids(0), [ids(0)], [WS, GF, ABORTED],
        behaviours={0: Behaviour.SILENT},
    ),
    "silent_device_in_the_third_wave": Scenario(
        20, RolloutStatus.ABORTED, ids(range(10)), [ids(range(10))],
        [WS, WP, WS, WP, WS, GF, ABORTED], behaviours={5: Behaviour.SILENT},
    ),
    "rollback_in_the_last_wave_spares_the_self_reverted": Scenario(
        20, RolloutStatus.ABORTED, ids(range(20)), [ids(range(15), range(16, 20))],
        [WS, WP] * 3 + [WS, GF, ABORTED], behaviours={15: Behaviour.ROLLBACK},
    ),
    "unobserved_commit_accepted": Scenario(
        20, RolloutStatus.COMPLETED, ids(range(20)), [], FOUR_WAVES,
        behaviours={0: Behaviour.UNOBSERVED},
    ),
    "unobserved_commit_rejected_when_observed_required": Scenario(
        20, RolloutStatus.ABORTED, ids(0), [ids(0)], [WS, GF, ABORTED],
        behaviours={0: Behaviour.UNOBSERVED}, policy=policy(require_observed=True),
    ),
    "ten_times_slower_caught_by_the_fleet_gate": Scenario(
        20, RolloutStatus.ABORTED, ids(0), [ids(0)], [WS, GF, ABORTED],
        new_health=replace(HEALTHY, p95_ms=100.0), control_health=HEALTHY,
    ),
    "nan_outputs_caught_by_the_fleet_gate_without_control": Scenario(
        20, RolloutStatus.ABORTED, ids(0), [ids(0)], [WS, GF, ABORTED],
        new_health=replace(HEALTHY, nonfinite_rate=0.01),
    ),
    "slow_but_no_control_group_relative_gates_skipped": Scenario(
        20, RolloutStatus.COMPLETED, ids(range(20)), [], FOUR_WAVES,
        new_health=replace(HEALTHY, p95_ms=100.0),
    ),
    "offline_devices_never_hold_up_a_wave": Scenario(
        20, RolloutStatus.COMPLETED, ids(0, 1, 2, range(5, 20)), [], FOUR_WAVES, offline=(3, 4),
    ),
    "one_device_soaks_once_per_wave": Scenario(1, RolloutStatus.COMPLETED, ids(0), [], FOUR_WAVES),
    "three_devices": Scenario(3, RolloutStatus.COMPLETED, ids(0, 1, 2), [], FOUR_WAVES),
    "empty_fleet_waits": Scenario(0, RolloutStatus.RUNNING, [], [], [WS]),
    "whole_fleet_offline_waits_for_a_canary": Scenario(
        5, RolloutStatus.RUNNING, [], [], [WS], offline=(0, 1, 2, 3, 4),
    ),
}  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_rollout_scenario(scenario: Scenario) -> None:
    fleet = Fleet.of(scenario.size, scenario.behaviours, scenario.offline)
    fleet.new_health, fleet.control_health = scenario.new_health, scenario.control_health

    state = drive(rollout(scenario.policy), fleet, ticks=scenario.ticks, restart_each_tick=True)

    assert state.status is scenario.status
    assert fleet.assigned == scenario.assigned
    assert [list(ids_) for ids_ in fleet.rollbacks] == scenario.rollbacks
    assert fleet.events == scenario.events
    assert list(state.rolled_back) == (scenario.rollbacks[0] if scenario.rollbacks else [])


def test_happy_path_timeline() -> None:
    fleet = Fleet.of(20)

    drive(rollout(), fleet, ticks=10)

    waves = [(t, p.state.status, p.state.wave) for t, p in enumerate(fleet.plans)]
    assert waves == [
        (0, RolloutStatus.RUNNING, 0),  # t=0: canary assigned
        (1, RolloutStatus.SOAKING, 0),  # t=60: it committed at 30, soak ends at 120
        (2, RolloutStatus.RUNNING, 1),  # t=120: canary passed, 10% assigned
        (3, RolloutStatus.SOAKING, 1),
        (4, RolloutStatus.RUNNING, 2),
        (5, RolloutStatus.SOAKING, 2),
        (6, RolloutStatus.RUNNING, 3),
        (7, RolloutStatus.SOAKING, 3),
        (8, RolloutStatus.COMPLETED, 3),
        (9, RolloutStatus.COMPLETED, 3),
    ]
    judged = [[g.name for g in p.gates] for p in fleet.plans if p.gates]
    assert len(judged) == 4
    assert judged[0][:2] == ["failure_rate", "rollback_rate"]


def test_an_aborted_rollout_never_assigns_again_whatever_joins() -> None:
    fleet = Fleet.of(20, {0: Behaviour.ROLLBACK})
    state = drive(rollout(), fleet, ticks=5)
    assert state.status is RolloutStatus.ABORTED
    for index in range(20, 25):
        fleet.join(index)

    state = drive(state, fleet, ticks=20, start_s=300.0)

    assert fleet.assigned == ids(0)
    assert fleet.events == [WS, GF, ABORTED]


def test_planning_is_deterministic_for_equal_inputs() -> None:
    fleet = Fleet.of(20)
    state = drive(rollout(), fleet, ticks=4)
    observations = fleet.observe(240.0)

    first = plan(state, observations, now_s=240.0)
    second = plan(state, observations, now_s=240.0)

    assert first == second
    assert first.actions  # the 10% wave passes here and the 50% wave starts
