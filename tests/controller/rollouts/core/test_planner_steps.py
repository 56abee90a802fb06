"""One planning step as tables: a canary wave's observations in, the decision out.

The state: a fleet of 20 online devices, waves 1,10%,50%,100%, soak 120 s, report
timeout 600 s; the canary ``d00`` was assigned at t=0. Each row is one call of ``plan``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from controller.rollouts.core import (
    AssignDevices,
    DeviceOutcome,
    DeviceReport,
    EmitEvent,
    EventKind,
    FleetHealth,
    GateThresholds,
    OnFailure,
    Plan,
    RollbackDevices,
    RolloutPolicy,
    RolloutStatus,
    parse_quota,
    plan,
)
from tests.controller.rollouts.core.fleet import HEALTHY, OLD, Fleet, drive, policy, rollout

WS, WP, GF = EventKind.WAVE_STARTED, EventKind.WAVE_PASSED, EventKind.GATE_FAILED
PAUSED, ABORTED = EventKind.ROLLOUT_PAUSED, EventKind.ROLLOUT_ABORTED
RUNNING, SOAKING = RolloutStatus.RUNNING, RolloutStatus.SOAKING


def at(outcome: DeviceOutcome, reported_at_s: float) -> DeviceReport:
    return DeviceReport(outcome, reported_at_s)


COMMITTED_AT_30 = at(DeviceOutcome.COMMITTED, 30.0)
ROLLED_BACK_AT_30 = at(DeviceOutcome.ROLLED_BACK, 30.0)


@dataclass(frozen=True)
class Step:
    report: DeviceReport | None
    now_s: float
    status: RolloutStatus
    events: list[EventKind]
    assigned: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    policy: RolloutPolicy = field(default_factory=policy)
    new_health: FleetHealth | None = None
    control_health: FleetHealth | None = None


STEPS = {
    "pending_within_the_timeout_waits": Step(None, 300.0, RUNNING, []),
    "committed_before_the_soak_ends_soaks": Step(COMMITTED_AT_30, 60.0, SOAKING, []),
    "committed_a_moment_before_the_soak_ends": Step(COMMITTED_AT_30, 119.9, SOAKING, []),
    "committed_and_soaked_next_wave": Step(COMMITTED_AT_30, 120.0, RUNNING, [WP, WS], ["d01"]),
    "no_soak_judged_once_reported": Step(
        COMMITTED_AT_30, 30.0, RUNNING, [WP, WS], ["d01"], policy=policy(soak_s=0.0)
    ),
    "silent_just_before_the_timeout_waits": Step(None, 599.0, RUNNING, []),
    "silent_at_the_timeout_fails": Step(
        None, 600.0, RolloutStatus.ABORTED, [GF, ABORTED], [], ["d00"]
    ),
    "commit_after_the_timeout_counts_as_failed": Step(
        at(DeviceOutcome.COMMITTED, 650.0), 700.0, RolloutStatus.ABORTED, [GF, ABORTED], [], ["d00"]
    ),
    "rolled_back_waits_for_the_soak": Step(ROLLED_BACK_AT_30, 60.0, SOAKING, []),
    "rolled_back_aborts_with_nothing_to_roll_back": Step(
        ROLLED_BACK_AT_30, 120.0, RolloutStatus.ABORTED, [GF, ABORTED]
    ),
    "rolled_back_pauses_under_the_pause_policy": Step(
        ROLLED_BACK_AT_30, 120.0, RolloutStatus.PAUSED, [GF, PAUSED],
        policy=policy(on_failure=OnFailure.PAUSE),
    ),
    "rolled_back_tolerated_by_the_thresholds": Step(
        ROLLED_BACK_AT_30, 120.0, RUNNING, [WP, WS], ["d01"],
        policy=policy(gates=GateThresholds(max_failure_rate=1.0, max_rollback_rate=1.0)),
    ),
    "failed_before_activation_aborts": Step(
        at(DeviceOutcome.FAILED, 30.0), 120.0, RolloutStatus.ABORTED, [GF, ABORTED]
    ),
    "unobserved_commit_passes": Step(
        at(DeviceOutcome.COMMITTED_UNOBSERVED, 30.0), 120.0, RUNNING, [WP, WS], ["d01"]
    ),
    "unobserved_commit_fails_when_observed_required": Step(
        at(DeviceOutcome.COMMITTED_UNOBSERVED, 30.0), 120.0, RolloutStatus.ABORTED,
        [GF, ABORTED], [], ["d00"], policy=policy(require_observed=True),
    ),
    "observed_commit_passes_when_observed_required": Step(
        COMMITTED_AT_30, 120.0, RUNNING, [WP, WS], ["d01"], policy=policy(require_observed=True)
    ),
    "nan_outputs_in_fleet_health_abort": Step(
        COMMITTED_AT_30, 120.0, RolloutStatus.ABORTED, [GF, ABORTED], [], ["d00"],
        new_health=replace(HEALTHY, nonfinite_rate=0.002), control_health=HEALTHY,
    ),
    "slow_against_the_control_group_aborts": Step(
        COMMITTED_AT_30, 120.0, RolloutStatus.ABORTED, [GF, ABORTED], [], ["d00"],
        new_health=replace(HEALTHY, p95_ms=100.0), control_health=HEALTHY,
    ),
    "slow_without_a_control_group_passes": Step(
        COMMITTED_AT_30, 120.0, RUNNING, [WP, WS], ["d01"],
        new_health=replace(HEALTHY, p95_ms=100.0), control_health=None,
    ),
}  # fmt: skip


def canary(rollout_policy: RolloutPolicy) -> tuple[Plan, Fleet]:
    fleet = Fleet.of(20)
    first = plan(rollout(rollout_policy), fleet.observe(0.0), now_s=0.0)
    assert [a.device_ids for a in first.actions if isinstance(a, AssignDevices)] == [("d00",)]
    return first, fleet


@pytest.mark.parametrize("step", STEPS.values(), ids=STEPS.keys())
def test_canary_step(step: Step) -> None:
    first, fleet = canary(step.policy)
    observations = replace(
        fleet.observe(0.0),
        reports={} if step.report is None else {"d00": step.report},
        new_health=step.new_health,
        control_health=step.control_health,
    )

    result = plan(first.state, observations, now_s=step.now_s)

    assert result.state.status is step.status
    assert [a.kind for a in result.actions if isinstance(a, EmitEvent)] == step.events
    assigned = [i for a in result.actions if isinstance(a, AssignDevices) for i in a.device_ids]
    assert assigned == step.assigned
    rollbacks = [a for a in result.actions if isinstance(a, RollbackDevices)]
    assert [i for a in rollbacks for i in a.device_ids] == step.rolled_back
    assert all(a.to_release == OLD for a in rollbacks)
    judged = GF in step.events or WP in step.events
    assert bool(result.gates) == judged
    assert judged or result.notes  # a wave not judged says what it waits for


def test_gate_results_are_kept_with_the_wave() -> None:
    first, fleet = canary(policy())
    observations = replace(fleet.observe(0.0), reports={"d00": ROLLED_BACK_AT_30})

    result = plan(first.state, observations, now_s=120.0)

    (judgement,) = result.state.judgements
    assert (judgement.wave, judgement.at_s, judgement.passed) == (0, 120.0, False)
    assert judgement.gates == result.gates
    failed = {g.name: g for g in judgement.gates if not g.passed}
    assert set(failed) == {"failure_rate", "rollback_rate"}
    assert (failed["rollback_rate"].value, failed["rollback_rate"].threshold) == (1.0, 0.0)
    gate_failed = next(a for a in result.actions if isinstance(a, EmitEvent) and a.kind is GF)
    assert gate_failed.details == {
        "rollout_id": "r-1",
        "wave": 0,
        "gates": ["failure_rate", "rollback_rate"],
    }


@pytest.mark.parametrize(
    ("online", "min_reporting", "wave", "status"),
    [
        (2, "3", 0, RUNNING),
        (2, "2", 1, RUNNING),
        (5, "100%", 1, RUNNING),
        (4, "100%", 0, RUNNING),
        (4, "80%", 1, RUNNING),
        (2, "0", 1, RUNNING),
        (0, "0", 0, RUNNING),
    ],
    ids=[
        "two_settled_three_required_waits",
        "two_settled_two_required",
        "whole_wave_settled",
        "one_of_five_offline_all_required_waits",
        "one_of_five_offline_80_percent_required",
        "zero_required_still_needs_one",
        "nobody_online_waits",
    ],
)
def test_min_reporting(online: int, min_reporting: str, wave: int, status: RolloutStatus) -> None:
    rollout_policy = policy("5,100%", min_reporting=parse_quota(min_reporting))
    fleet = Fleet.of(10, offline=range(online, 10))

    state = drive(rollout(rollout_policy), fleet, ticks=20)

    assert (state.wave, state.status) == (wave, status)
    assert fleet.assigned == [f"d{i:02d}" for i in range(online)]
