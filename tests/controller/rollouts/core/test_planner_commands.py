"""Operator commands and devices that come later, as tables of scripted rollouts.

A script changes the fleet before a tick: an operator command, a device joining or coming
back online. Commands stay in the observations on every later tick, as they would in the
database: the planner must apply each one once. Timeline without commands (``fleet.py``
defaults, 20 devices): the canary is assigned at tick 0 and soaks until tick 2, then the
waves start at ticks 2, 4 and 6, and the rollout completes at tick 8.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from controller.rollouts.core import (
    CommandKind,
    EmitEvent,
    EventKind,
    OnFailure,
    RolloutPolicy,
    RolloutStatus,
)
from tests.controller.rollouts.core.fleet import (
    NEW,
    Behaviour,
    Fleet,
    Script,
    drive,
    policy,
    rollout,
)

WS, WP, GF = EventKind.WAVE_STARTED, EventKind.WAVE_PASSED, EventKind.GATE_FAILED
PAUSED, RESUMED = EventKind.ROLLOUT_PAUSED, EventKind.ROLLOUT_RESUMED
ABORTED, COMPLETED = EventKind.ROLLOUT_ABORTED, EventKind.ROLLOUT_COMPLETED
PROMOTED = EventKind.WAVE_PROMOTED
FOUR_WAVES = [WS, WP] * 4 + [COMPLETED]


def command(*kinds: CommandKind) -> Callable[[Fleet], None]:
    def issue(fleet: Fleet) -> None:
        for kind in kinds:
            fleet.command(kind)

    return issue


def join(*indexes: int) -> Callable[[Fleet], None]:
    def add(fleet: Fleet) -> None:
        for index in indexes:
            fleet.join(index)

    return add


def online(*indexes: int) -> Callable[[Fleet], None]:
    def back(fleet: Fleet) -> None:
        for index in indexes:
            fleet.devices[f"d{index:02d}"].online = True

    return back


def already_new(index: int) -> Callable[[Fleet], None]:
    def add(fleet: Fleet) -> None:
        fleet.join(index)
        fleet.devices[f"d{index:02d}"].release = NEW

    return add


PAUSE, RESUME = CommandKind.PAUSE, CommandKind.RESUME
ABORT, PROMOTE = CommandKind.ABORT, CommandKind.PROMOTE


@dataclass(frozen=True)
class Run:
    script: Script
    status: RolloutStatus
    events: list[EventKind]
    assigned: int  # how many devices were assigned, each once
    rolled_back: int = 0
    behaviours: dict[int, Behaviour] = field(default_factory=dict)
    policy: RolloutPolicy = field(default_factory=policy)
    offline: tuple[int, ...] = ()
    size: int = 20
    ticks: int = 20


RUNS = {
    "pause_stops_assigning": Run({1: command(PAUSE)}, RolloutStatus.PAUSED, [WS, PAUSED], 1),
    "pause_before_the_start": Run({0: command(PAUSE)}, RolloutStatus.PAUSED, [PAUSED], 0),
    "pause_then_resume_completes": Run(
        {1: command(PAUSE), 5: command(RESUME)}, RolloutStatus.COMPLETED,
        [WS, PAUSED, RESUMED, *FOUR_WAVES[1:]], 20,
    ),
    "pause_and_resume_in_one_tick": Run(
        {1: command(PAUSE, RESUME)}, RolloutStatus.COMPLETED,
        [WS, PAUSED, RESUMED, *FOUR_WAVES[1:]], 20,
    ),
    "abort_rolls_back_every_updated_device": Run(
        {5: command(ABORT)}, RolloutStatus.ABORTED, [WS, WP, WS, WP, WS, ABORTED], 10, 10,
    ),
    "abort_spares_devices_that_reverted_alone": Run(
        {5: command(ABORT)}, RolloutStatus.ABORTED, [WS, WP, WS, WP, WS, ABORTED], 10, 9,
        behaviours={7: Behaviour.FAIL},
    ),
    "abort_a_completed_rollout": Run(
        {10: command(ABORT)}, RolloutStatus.ABORTED, [*FOUR_WAVES, ABORTED], 20, 20,
    ),
    "abort_twice_is_one_abort": Run(
        {3: command(ABORT), 4: command(ABORT)}, RolloutStatus.ABORTED, [WS, WP, WS, ABORTED], 2, 2,
    ),
    "promote_skips_the_soak": Run(
        {1: command(PROMOTE)}, RolloutStatus.COMPLETED, [WS, PROMOTED, *FOUR_WAVES[1:]], 20,
    ),
    "promote_never_skips_a_silent_device": Run(
        {1: command(PROMOTE)}, RolloutStatus.ABORTED, [WS, PROMOTED, GF, ABORTED], 1, 1,
        behaviours={0: Behaviour.SILENT},
    ),
    "promote_when_paused_is_ignored": Run(
        {1: command(PAUSE, PROMOTE)}, RolloutStatus.PAUSED, [WS, PAUSED], 1,
    ),
    "resume_after_failed_gates_accepts_the_wave": Run(
        {5: command(RESUME)}, RolloutStatus.COMPLETED,
        [WS, GF, PAUSED, RESUMED, *FOUR_WAVES[1:]], 20,
        behaviours={0: Behaviour.ROLLBACK}, policy=policy(on_failure=OnFailure.PAUSE),
    ),
    "abort_after_failed_gates_paused": Run(
        {5: command(ABORT)}, RolloutStatus.ABORTED, [WS, GF, PAUSED, ABORTED], 1, 0,
        behaviours={0: Behaviour.ROLLBACK}, policy=policy(on_failure=OnFailure.PAUSE),
    ),
    "resume_when_running_is_ignored": Run(
        {1: command(RESUME)}, RolloutStatus.COMPLETED, FOUR_WAVES, 20,
    ),
    "joiners_after_completion_get_the_release": Run(
        {12: join(20, 21)}, RolloutStatus.COMPLETED, FOUR_WAVES, 22,
    ),
    "joiners_during_a_wave_fill_growing_targets": Run(
        {5: join(20, 21, 22, 23)}, RolloutStatus.COMPLETED, FOUR_WAVES, 24,
    ),
    "offline_devices_converge_when_back": Run(
        {12: online(3, 4)}, RolloutStatus.COMPLETED, FOUR_WAVES, 20, offline=(3, 4),
    ),
    "joiners_wait_while_paused": Run(
        {1: command(PAUSE), 3: join(20), 8: command(RESUME)}, RolloutStatus.COMPLETED,
        [WS, PAUSED, RESUMED, *FOUR_WAVES[1:]], 21,
    ),
    "joiner_already_on_the_release_is_left_alone": Run(
        {5: already_new(20)}, RolloutStatus.COMPLETED, FOUR_WAVES, 20,
    ),
    "last_wave_offline_waits_then_completes": Run(
        {12: online(*range(10, 20))}, RolloutStatus.COMPLETED, FOUR_WAVES, 20,
        offline=tuple(range(10, 20)),
    ),
}  # fmt: skip


@pytest.mark.parametrize("run", RUNS.values(), ids=RUNS.keys())
def test_scripted_rollout(run: Run) -> None:
    fleet = Fleet.of(run.size, run.behaviours, run.offline)

    state = drive(
        rollout(run.policy), fleet, ticks=run.ticks, script=run.script, restart_each_tick=True
    )

    assert state.status is run.status
    assert fleet.events == run.events
    assert len(fleet.assigned) == len(set(fleet.assigned)) == run.assigned
    assert sum(len(ids) for ids in fleet.rollbacks) == run.rolled_back
    assert state.last_command_id == len(fleet.commands)


def test_resume_past_failed_gates_is_recorded_as_an_override() -> None:
    fleet = Fleet.of(20, {0: Behaviour.ROLLBACK})
    rollout_policy = policy(on_failure=OnFailure.PAUSE)

    state = drive(rollout(rollout_policy), fleet, ticks=6, script={5: command(RESUME)})

    failed, accepted = state.judgements
    assert (failed.wave, failed.passed, failed.overridden) == (0, False, False)
    assert (accepted.wave, accepted.passed, accepted.overridden) == (0, True, True)
    assert state.wave == 1


def test_ignored_command_is_noted() -> None:
    fleet = Fleet.of(3)

    drive(rollout(), fleet, ticks=12, script={11: command(PAUSE)})

    last = fleet.plans[-1]
    assert last.notes == ("pause ignored: the rollout is completed",)
    assert not [a for a in last.actions if isinstance(a, EmitEvent)]


def test_late_joiners_are_assigned_in_the_last_wave_at_the_rollout_release() -> None:
    fleet = Fleet.of(20)
    state = drive(rollout(), fleet, ticks=10)
    fleet.join(20)

    state = drive(state, fleet, ticks=1, start_s=600.0)

    assert state.assignments[-1].device_id == "d20"
    assert state.assignments[-1].wave == 3
    assert state.assigned_in_wave(3)[-1] == "d20"
