"""Rollout policies and states survive the trip through the database's JSON unchanged."""

from __future__ import annotations

import json
from decimal import Decimal

from controller.rollouts.codec import (
    decode_policy,
    decode_probation,
    decode_state,
    encode_policy,
    encode_state,
)
from controller.rollouts.core import (
    Assignment,
    GateResult,
    GateThresholds,
    OnFailure,
    PauseReason,
    Quota,
    RolloutPolicy,
    RolloutState,
    RolloutStatus,
    ShadowPolicy,
    WaveJudgement,
    parse_waves,
)
from protocol import ProbationPolicy, ReleaseRef

NEW = ReleaseRef(model="digits", version=2, sha256="b" * 64)
OLD = ReleaseRef(model="digits", version=1, sha256="a" * 64)


def test_policy_and_probation_round_trip() -> None:
    policy = RolloutPolicy(
        waves=parse_waves("1,12.5%,50%,100%"),
        soak_s=90.0,
        min_reporting=Quota(percent=Decimal("80")),
        report_timeout_s=600.0,
        on_failure=OnFailure.PAUSE,
        require_observed=True,
        gates=GateThresholds(max_p95_latency_ratio=None, min_health_requests=10),
    )
    probation = ProbationPolicy(window_s=30.0, min_requests=5)
    stored = json.loads(json.dumps(encode_policy(policy, probation)))
    assert decode_policy(stored) == policy
    assert decode_probation(stored) == probation


def test_state_round_trips_with_its_assignments_passed_back() -> None:
    policy = RolloutPolicy(waves=parse_waves("1,100%"))
    assignments = (Assignment("dev-1", 0, 10.0), Assignment("dev-2", 1, 20.0))
    gates = (GateResult("failure_rate", 0.5, 0.0, False, "1 failed, of 2"),)
    state = RolloutState(
        rollout_id="ro-1",
        release=NEW,
        last_good=OLD,
        policy=policy,
        status=RolloutStatus.PAUSED,
        wave=1,
        wave_started_s=20.0,
        assignments=assignments,
        promoted_wave=0,
        pause_reason=PauseReason.GATES,
        last_command_id=3,
        judgements=(WaveJudgement(0, 15.0, True, gates, overridden=True),),
        rolled_back=("dev-9",),
    )
    stored = json.loads(json.dumps(encode_state(state)))
    assert "assignments" not in stored
    assert decode_state(stored, policy, assignments) == state


def test_a_shadow_stage_round_trips_in_the_policy_and_the_state() -> None:
    shadow = ShadowPolicy(
        devices=Quota(percent=Decimal("12.5")),
        duration_s=300.0,
        min_samples=50,
        max_cpu_fraction=0.1,
        min_agreement=None,
        max_distance=0.2,
    )
    policy = RolloutPolicy(waves=parse_waves("1,100%"), shadow=shadow)
    stored_policy = json.loads(json.dumps(encode_policy(policy, ProbationPolicy())))
    assert decode_policy(stored_policy) == policy
    gates = (GateResult("shadow_agreement", 0.7, 0.98, False, "500 rows"),)
    state = RolloutState(
        rollout_id="ro-2",
        release=NEW,
        last_good=OLD,
        policy=policy,
        status=RolloutStatus.PAUSED,
        pause_reason=PauseReason.GATES,
        shadow_devices=("dev-1", "dev-2"),
        shadow_started_s=5.0,
        shadow_promoted=True,
        shadow_judgement=WaveJudgement(-1, 305.0, False, gates),
    )
    stored = json.loads(json.dumps(encode_state(state)))
    assert decode_state(stored, policy, ()) == state
