"""Rollout policies and planner states as JSON for the database, and back.

Invariants: ``decode_*(encode_*(x)) == x`` for every policy and state (tested); a state's
assignments are not in its JSON (they are rows of ``rollout_assignments``) and are passed
back in when decoding; the probation policy devices get travels with the rollout policy.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from protocol import ProbationPolicy, ReleaseRef

from ..registry.tables import ReleaseRecord
from .core import (
    Assignment,
    GateResult,
    GateThresholds,
    OnFailure,
    PauseReason,
    RolloutPolicy,
    RolloutState,
    RolloutStatus,
    ShadowPolicy,
    WaveJudgement,
    parse_quota,
    parse_waves,
)

__all__ = [
    "decode_policy",
    "decode_probation",
    "decode_state",
    "encode_gates",
    "encode_policy",
    "encode_state",
    "release_ref",
]


def release_ref(release: ReleaseRecord) -> ReleaseRef:
    return ReleaseRef(model=release.model_name, version=release.version, sha256=release.sha256)


def encode_policy(policy: RolloutPolicy, probation: ProbationPolicy) -> dict[str, Any]:
    return {
        "waves": ",".join(str(wave) for wave in policy.waves),
        "soak_s": policy.soak_s,
        "min_reporting": str(policy.min_reporting),
        "report_timeout_s": policy.report_timeout_s,
        "on_failure": policy.on_failure.value,
        "require_observed": policy.require_observed,
        "gates": asdict(policy.gates),
        "probation": probation.model_dump(mode="json"),
        "shadow": None if policy.shadow is None else _encode_shadow(policy.shadow),
    }


def _encode_shadow(shadow: ShadowPolicy) -> dict[str, Any]:
    return {**asdict(shadow), "devices": str(shadow.devices)}


def _decode_shadow(data: dict[str, Any] | None) -> ShadowPolicy | None:
    if data is None:
        return None
    return ShadowPolicy(**{**data, "devices": parse_quota(data["devices"])})


def decode_policy(data: dict[str, Any]) -> RolloutPolicy:
    return RolloutPolicy(
        waves=parse_waves(data["waves"]),
        soak_s=float(data["soak_s"]),
        min_reporting=parse_quota(data["min_reporting"]),
        report_timeout_s=float(data["report_timeout_s"]),
        on_failure=OnFailure(data["on_failure"]),
        require_observed=bool(data["require_observed"]),
        gates=GateThresholds(**data["gates"]),
        shadow=_decode_shadow(data.get("shadow")),
    )


def decode_probation(data: dict[str, Any]) -> ProbationPolicy:
    return ProbationPolicy.model_validate(data.get("probation", {}))


def encode_gates(gates: tuple[GateResult, ...]) -> list[dict[str, Any]]:
    return [asdict(gate) for gate in gates]


def _decode_gates(data: list[dict[str, Any]]) -> tuple[GateResult, ...]:
    return tuple(GateResult(**gate) for gate in data)


def _ref(ref: ReleaseRef | None) -> dict[str, Any] | None:
    return None if ref is None else ref.model_dump(mode="json")


def encode_state(state: RolloutState) -> dict[str, Any]:
    """The state without its policy (stored apart) and without its assignments (rows)."""
    return {
        "rollout_id": state.rollout_id,
        "release": _ref(state.release),
        "last_good": _ref(state.last_good),
        "status": state.status.value,
        "wave": state.wave,
        "wave_started_s": state.wave_started_s,
        "promoted_wave": state.promoted_wave,
        "pause_reason": None if state.pause_reason is None else state.pause_reason.value,
        "last_command_id": state.last_command_id,
        "judgements": [_encode_judgement(j) for j in state.judgements],
        "rolled_back": list(state.rolled_back),
        "shadow_devices": list(state.shadow_devices),
        "shadow_started_s": state.shadow_started_s,
        "shadow_promoted": state.shadow_promoted,
        "shadow_judgement": None
        if state.shadow_judgement is None
        else _encode_judgement(state.shadow_judgement),
    }


def _encode_judgement(judgement: WaveJudgement) -> dict[str, Any]:
    return {
        "wave": judgement.wave,
        "at_s": judgement.at_s,
        "passed": judgement.passed,
        "overridden": judgement.overridden,
        "gates": encode_gates(judgement.gates),
    }


def _decode_judgement(data: dict[str, Any]) -> WaveJudgement:
    return WaveJudgement(
        wave=data["wave"],
        at_s=data["at_s"],
        passed=data["passed"],
        gates=_decode_gates(data["gates"]),
        overridden=data.get("overridden", False),
    )


def decode_state(
    data: dict[str, Any], policy: RolloutPolicy, assignments: tuple[Assignment, ...]
) -> RolloutState:
    last_good = data.get("last_good")
    pause_reason = data.get("pause_reason")
    return RolloutState(
        rollout_id=data["rollout_id"],
        release=ReleaseRef.model_validate(data["release"]),
        last_good=None if last_good is None else ReleaseRef.model_validate(last_good),
        policy=policy,
        status=RolloutStatus(data["status"]),
        wave=int(data["wave"]),
        wave_started_s=data.get("wave_started_s"),
        assignments=assignments,
        promoted_wave=data.get("promoted_wave"),
        pause_reason=None if pause_reason is None else PauseReason(pause_reason),
        last_command_id=int(data.get("last_command_id", 0)),
        judgements=tuple(_decode_judgement(j) for j in data.get("judgements", [])),
        rolled_back=tuple(data.get("rolled_back", [])),
        shadow_devices=tuple(data.get("shadow_devices", [])),
        shadow_started_s=data.get("shadow_started_s"),
        shadow_promoted=bool(data.get("shadow_promoted", False)),
        shadow_judgement=None
        if data.get("shadow_judgement") is None
        else _decode_judgement(data["shadow_judgement"]),
    )
