"""The shadow stage of the planner: orders out, judged by its gates, then the canary.

A fleet of 10 online devices on OLD; the policy shadows on 2 devices for 600 s with at
least 200 samples, report timeout 600 s. Each test calls ``plan`` step by step.
"""

from __future__ import annotations

from dataclasses import replace

from controller.rollouts.core import (
    SHADOW_STAGE,
    AssignDevices,
    CommandKind,
    DeviceView,
    EmitEvent,
    EventKind,
    Observations,
    OnFailure,
    OperatorCommand,
    Plan,
    Quota,
    RolloutState,
    RolloutStatus,
    ShadowDevices,
    ShadowHealth,
    ShadowPolicy,
    StopShadow,
    evaluate_shadow_gates,
    plan,
)
from tests.controller.rollouts.core.fleet import NEW, OLD, device_id, policy, rollout

SHADOW = ShadowPolicy(devices=Quota(count=2), duration_s=600.0, min_samples=200)
AGREEING = ShadowHealth(
    devices=2, samples=500, error_rate=0.0, nonfinite_rate=0.0, compared_rows=500,
    agreement=0.996, confidence_drop=0.01, mean_distance=0.02, latency_ratio=1.1,
)  # fmt: skip
DISAGREEING = replace(AGREEING, agreement=0.7)


def devices(size: int = 10, *, offline: tuple[int, ...] = ()) -> tuple[DeviceView, ...]:
    return tuple(DeviceView(device_id(i), i not in offline, OLD) for i in range(size))


def start(**overrides: object) -> tuple[RolloutState, Plan]:
    state = rollout(policy(shadow=SHADOW, **overrides))
    result = plan(state, Observations(devices()), now_s=0.0)
    return result.state, result


def kinds(result: Plan) -> list[EventKind]:
    return [a.kind for a in result.actions if isinstance(a, EmitEvent)]


def test_a_shadow_stage_orders_shadows_and_assigns_nothing() -> None:
    state, result = start()
    assert state.status is RolloutStatus.SHADOW
    orders = [a for a in result.actions if isinstance(a, ShadowDevices)]
    assert orders == [ShadowDevices(("d00", "d01"), NEW, 1200.0, 0.2)]
    assert not [a for a in result.actions if isinstance(a, AssignDevices)]
    assert kinds(result) == [EventKind.SHADOW_STARTED]
    # Planning again orders no device twice.
    again = plan(state, Observations(devices(), shadow_health=AGREEING), now_s=60.0)
    assert not [a for a in again.actions if isinstance(a, ShadowDevices)]


def test_only_devices_that_serve_another_release_and_are_online_shadow() -> None:
    views = (
        DeviceView("d00", True, None),  # serves nothing: nothing to compare with
        DeviceView("d01", False, OLD),
        DeviceView("d02", True, NEW),  # already on the release
        DeviceView("d03", True, OLD),
        DeviceView("d04", True, OLD),
        DeviceView("d05", True, OLD),
    )
    result = plan(rollout(policy(shadow=SHADOW)), Observations(views), now_s=0.0)
    orders = [a for a in result.actions if isinstance(a, ShadowDevices)]
    assert [o.device_ids for o in orders] == [("d03", "d04")]


def test_the_stage_waits_for_its_duration_then_for_samples_until_the_deadline() -> None:
    state, _ = start()
    few = replace(AGREEING, samples=50)
    waiting = plan(state, Observations(devices(), shadow_health=AGREEING), now_s=300.0)
    assert waiting.state.status is RolloutStatus.SHADOW
    short = plan(state, Observations(devices(), shadow_health=few), now_s=700.0)
    assert short.state.status is RolloutStatus.SHADOW
    assert "50 samples of the 200 wanted" in " ".join(short.notes)
    # At the deadline it is judged with what there is: too few samples skip every gate.
    late = plan(state, Observations(devices(), shadow_health=few), now_s=1200.0)
    assert late.state.status is RolloutStatus.RUNNING
    assert all(g.passed and g.note.startswith(("skipped", "disabled")) for g in late.gates)


def test_an_agreeing_shadow_passes_stops_every_shadow_and_starts_the_canary() -> None:
    state, _ = start()
    result = plan(state, Observations(devices(), shadow_health=AGREEING), now_s=600.0)
    assert result.state.status is RolloutStatus.RUNNING
    assert kinds(result) == [EventKind.SHADOW_PASSED, EventKind.WAVE_STARTED]
    stops = [a for a in result.actions if isinstance(a, StopShadow)]
    assert stops == [StopShadow(("d00", "d01"))]
    assigned = [a for a in result.actions if isinstance(a, AssignDevices)]
    assert assigned == [AssignDevices(("d00",), NEW, 0)]
    # The stop comes first: the canary's deployment supersedes it on d00.
    assert result.actions.index(stops[0]) < result.actions.index(assigned[0])
    judgement = result.state.shadow_judgement
    assert judgement is not None
    assert (judgement.wave, judgement.passed) == (SHADOW_STAGE, True)
    assert not result.state.shadow_running


def test_a_disagreeing_shadow_aborts_with_no_device_updated_and_no_rollback() -> None:
    state, _ = start()
    result = plan(state, Observations(devices(), shadow_health=DISAGREEING), now_s=600.0)
    assert result.state.status is RolloutStatus.ABORTED
    failed = [g.name for g in result.gates if not g.passed]
    assert failed == ["shadow_agreement"]
    assert not [a for a in result.actions if isinstance(a, AssignDevices)]
    assert [a for a in result.actions if isinstance(a, StopShadow)] == [StopShadow(("d00", "d01"))]
    assert result.state.assignments == ()
    assert kinds(result) == [EventKind.GATE_FAILED, EventKind.ROLLOUT_ABORTED]


def test_paused_on_failed_shadow_gates_resume_overrides_and_starts_the_canary() -> None:
    state, _ = start(on_failure=OnFailure.PAUSE)
    paused = plan(state, Observations(devices(), shadow_health=DISAGREEING), now_s=600.0)
    assert paused.state.status is RolloutStatus.PAUSED
    resume = (OperatorCommand(1, CommandKind.RESUME),)
    resumed = plan(paused.state, Observations(devices(), commands=resume), now_s=700.0)
    assert resumed.state.status is RolloutStatus.RUNNING
    judgement = resumed.state.shadow_judgement
    assert judgement is not None
    assert judgement.overridden
    assert [a for a in resumed.actions if isinstance(a, AssignDevices)]


def test_an_operator_pause_keeps_the_stage_and_resume_returns_to_it() -> None:
    state, _ = start()
    pause = (OperatorCommand(1, CommandKind.PAUSE),)
    paused = plan(state, Observations(devices(), commands=pause), now_s=60.0)
    assert paused.state.status is RolloutStatus.PAUSED
    resume = (*pause, OperatorCommand(2, CommandKind.RESUME))
    resumed = plan(paused.state, Observations(devices(), commands=resume), now_s=120.0)
    assert resumed.state.status is RolloutStatus.SHADOW
    assert not [a for a in resumed.actions if isinstance(a, ShadowDevices)]  # no new orders


def test_promote_judges_the_stage_now_and_abort_stops_the_shadows() -> None:
    state, _ = start()
    promote = (OperatorCommand(1, CommandKind.PROMOTE),)
    observed = Observations(devices(), shadow_health=AGREEING, commands=promote)
    promoted = plan(state, observed, now_s=60.0)
    assert promoted.state.status is RolloutStatus.RUNNING
    abort = (OperatorCommand(1, CommandKind.ABORT),)
    aborted = plan(state, Observations(devices(), commands=abort), now_s=60.0)
    assert aborted.state.status is RolloutStatus.ABORTED
    assert [a for a in aborted.actions if isinstance(a, StopShadow)] == [StopShadow(("d00", "d01"))]
    assert not aborted.state.shadow_running


def test_shadow_gates_read_both_ways() -> None:
    passing = evaluate_shadow_gates(AGREEING, SHADOW)
    assert all(g.passed for g in passing)
    slow = evaluate_shadow_gates(replace(AGREEING, latency_ratio=2.0), SHADOW)
    assert [g.name for g in slow if not g.passed] == ["shadow_latency_ratio"]
    nan = evaluate_shadow_gates(replace(AGREEING, nonfinite_rate=0.01), SHADOW)
    assert [g.name for g in nan if not g.passed] == ["shadow_nonfinite_rate"]
    # Exactly at the floor passes; a regression model (no agreement) is read by distance.
    edge = evaluate_shadow_gates(replace(AGREEING, agreement=0.98), SHADOW)
    assert all(g.passed for g in edge)
    regression = replace(AGREEING, agreement=None, compared_rows=0, mean_distance=0.3)
    far = evaluate_shadow_gates(regression, replace(SHADOW, max_distance=0.1))
    assert [g.name for g in far if not g.passed] == ["shadow_distance"]


def test_with_no_device_to_shadow_on_the_stage_passes_at_once_saying_why() -> None:
    views = tuple(DeviceView(device_id(i), True, None) for i in range(3))  # a first rollout
    result = plan(rollout(policy(shadow=SHADOW)), Observations(views), now_s=0.0)
    assert result.state.status is RolloutStatus.RUNNING
    assert kinds(result) == [
        EventKind.SHADOW_STARTED,
        EventKind.SHADOW_PASSED,
        EventKind.WAVE_STARTED,
    ]
    assert all(g.note.startswith(("skipped: 0 samples", "disabled")) for g in result.gates)


def test_a_device_with_a_deployment_pending_is_not_ordered_to_shadow() -> None:
    views = (
        DeviceView("d00", True, OLD, update_pending=True),  # a signed update would be replaced
        DeviceView("d01", True, OLD),
        DeviceView("d02", True, OLD),
    )
    result = plan(rollout(policy(shadow=SHADOW)), Observations(views), now_s=0.0)
    orders = [a for a in result.actions if isinstance(a, ShadowDevices)]
    assert [o.device_ids for o in orders] == [("d01", "d02")]


def test_a_device_back_after_the_watch_is_over_gets_no_shadow_order() -> None:
    state, _ = start()
    back = devices(12)  # two more devices, and the first two went away
    views = tuple(v for v in back if v.device_id not in ("d00", "d01"))
    few = replace(AGREEING, samples=50)
    during = plan(state, Observations(views, shadow_health=few), now_s=300.0)
    assert [a.device_ids for a in during.actions if isinstance(a, ShadowDevices)] == [
        ("d02", "d03")
    ]
    after = plan(state, Observations(views, shadow_health=few), now_s=700.0)
    assert not [a for a in after.actions if isinstance(a, ShadowDevices)]
