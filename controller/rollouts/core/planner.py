"""The rollout planner: state and observations in, the next state and actions out.

Pure and deterministic: no I/O, no clock; ``now_s`` (wall-clock seconds, as it is compared
with stored times) is passed in.

| status           | condition                                  | next                          |
| ---------------- | ------------------------------------------ | ----------------------------- |
| PENDING          | -                                          | wave 0 starts: RUNNING        |
| RUNNING, SOAKING | -                                          | top the wave up to its target |
|                  | a wave device pending and not timed out    | RUNNING (wait)                |
|                  | fewer than min_reporting devices settled   | RUNNING (wait)                |
|                  | soak not over and the wave not promoted    | SOAKING (wait)                |
|                  | judged: every gate passed                  | next wave, or COMPLETED       |
|                  | judged: a gate failed                      | PAUSED, or ABORTED + rollback |
| PAUSED           | -                                          | nothing is assigned           |
| COMPLETED        | -                                          | top up to the last target     |
| ABORTED          | -                                          | nothing, ever                 |

Invariants:
- a device is assigned at most once (``assignments`` keeps every device ever targeted), so
  planning again from a plan's state with the same observations assigns nothing;
- only online devices are assigned, in the caller's stable order: an offline device never
  fails a wave, and is assigned when back online while the target leaves room. Targets
  are shares of the matching fleet as it is now, so joiners fill growing targets alike;
  once COMPLETED they are assigned up to the last target (all of them, after 100%);
- a wave is judged when each of its devices has a final outcome or timed out, when
  ``min_reporting`` of the devices it should add (and one at least, if any, and always in
  the canary) have settled, and when its soak is over or ``promote`` skipped it;
- an abort orders every assigned device back to ``last_good``, except those that failed
  or rolled back on their own (they already run it), and assigns nothing ever after;
- operator commands apply once each, in ``command_id`` order, before the rules above;
  ``resume`` after failed gates accepts the wave; ``abort`` also ends a COMPLETED rollout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from protocol import ReleaseRef

from .gates import CommandKind, DeviceOutcome, Observations, WaveTally, evaluate_gates, tally_wave
from .waves import (
    Assignment,
    GateResult,
    OnFailure,
    PauseReason,
    RolloutState,
    RolloutStatus,
    WaveJudgement,
    wave_targets,
)

__all__ = [
    "Action",
    "AssignDevices",
    "EmitEvent",
    "EventKind",
    "Plan",
    "RollbackDevices",
    "plan",
]


class EventKind(StrEnum):
    WAVE_STARTED = "wave_started"
    WAVE_PASSED = "wave_passed"
    WAVE_PROMOTED = "wave_promoted"
    GATE_FAILED = "gate_failed"
    ROLLOUT_PAUSED = "rollout_paused"
    ROLLOUT_RESUMED = "rollout_resumed"
    ROLLOUT_ABORTED = "rollout_aborted"
    ROLLOUT_COMPLETED = "rollout_completed"


@dataclass(frozen=True)
class AssignDevices:
    """Sign a deployment of ``release`` for each device and publish it as desired state."""

    device_ids: tuple[str, ...]
    release: ReleaseRef
    wave: int


@dataclass(frozen=True)
class RollbackDevices:
    """Order each device back to ``to_release`` (``None``: clear its desired state)."""

    device_ids: tuple[str, ...]
    to_release: ReleaseRef | None


@dataclass(frozen=True)
class EmitEvent:
    """An event for webhooks and the audit trail; ``details`` holds ``rollout_id``."""

    kind: EventKind
    details: Mapping[str, Any]


Action = AssignDevices | RollbackDevices | EmitEvent


@dataclass(frozen=True)
class Plan:
    state: RolloutState
    actions: tuple[Action, ...]
    gates: tuple[GateResult, ...] = ()  # evaluated by this call, when it judged a wave
    notes: tuple[str, ...] = ()  # what the rollout waits for; commands ignored


def plan(state: RolloutState, observations: Observations, *, now_s: float) -> Plan:
    """Decide what ``state`` does next given ``observations``, as of ``now_s``."""
    step = _Step(state, observations, now_s)
    for command in sorted(observations.commands, key=lambda c: c.command_id):
        if command.command_id > step.state.last_command_id:
            step.update(last_command_id=command.command_id)
            step.command(command.kind)
    step.advance()
    return Plan(step.state, tuple(step.actions), step.gates, tuple(step.notes))


class _Step:
    """One call of ``plan``: the state as it changes, and what was decided on the way."""

    def __init__(self, state: RolloutState, observations: Observations, now_s: float) -> None:
        self.state, self.observations, self.now_s = state, observations, now_s
        self.actions: list[Action] = []
        self.gates: tuple[GateResult, ...] = ()
        self.notes: list[str] = []

    def update(self, **changes: Any) -> None:
        self.state = replace(self.state, **changes)

    def emit(self, kind: EventKind, **details: Any) -> None:
        self.actions.append(EmitEvent(kind, {"rollout_id": self.state.rollout_id, **details}))

    def command(self, kind: CommandKind) -> None:
        status, wave = self.state.status, self.state.wave
        if kind is CommandKind.ABORT and status is not RolloutStatus.ABORTED:
            self.abort("operator")
        elif kind is CommandKind.PAUSE and status in (RolloutStatus.PENDING, *_ACTIVE):
            self.update(status=RolloutStatus.PAUSED, pause_reason=PauseReason.OPERATOR)
            self.emit(EventKind.ROLLOUT_PAUSED, reason="operator", wave=wave)
        elif kind is CommandKind.PROMOTE and status in _ACTIVE:
            self.update(promoted_wave=wave)
            self.emit(EventKind.WAVE_PROMOTED, wave=wave)
        elif kind is CommandKind.RESUME and status is RolloutStatus.PAUSED:
            started = self.state.wave_started_s is not None
            resumed = RolloutStatus.RUNNING if started else RolloutStatus.PENDING
            reason = self.state.pause_reason
            self.update(status=resumed, pause_reason=None)
            self.emit(EventKind.ROLLOUT_RESUMED, wave=wave)
            if reason is PauseReason.GATES:
                self.wave_passed((), overridden=True)
        else:
            self.notes.append(f"{kind} ignored: the rollout is {status}")

    def advance(self) -> None:
        status = self.state.status
        if status is RolloutStatus.PENDING:
            self.start_wave(0)
        elif status in _ACTIVE:
            self.top_up()
            self.judge_when_ready()
        elif status is RolloutStatus.COMPLETED:
            self.top_up()
        elif status is RolloutStatus.PAUSED:
            self.notes.append(f"paused by {self.state.pause_reason}: nothing is assigned")

    def targets(self) -> list[int]:
        # Devices already on the release, but not through this rollout, are left alone.
        release, assigned = self.state.release, self.state.assigned_ids
        fleet = {
            d.device_id
            for d in self.observations.devices
            if d.device_id in assigned or d.release != release
        }
        return wave_targets(self.state.policy.waves, len(fleet))

    def top_up(self) -> None:
        """Assign online devices, in the caller's order, up to the current wave's target."""
        wave, release, assigned = self.state.wave, self.state.release, self.state.assigned_ids
        devices = self.observations.devices
        room = self.targets()[wave] - len(assigned & {d.device_id for d in devices})
        chosen: list[str] = []
        for device in devices:
            wanted = device.online and device.release != release and len(chosen) < room
            if wanted and device.device_id not in assigned and device.device_id not in chosen:
                chosen.append(device.device_id)
        if room > len(chosen):
            self.notes.append(f"{room - len(chosen)} more devices wanted, none online to take")
        if chosen:
            added = tuple(Assignment(device_id, wave, self.now_s) for device_id in chosen)
            self.update(assignments=self.state.assignments + added)
            self.actions.append(AssignDevices(tuple(chosen), release, wave))

    def start_wave(self, wave: int) -> None:
        self.update(status=RolloutStatus.RUNNING, wave=wave, wave_started_s=self.now_s)
        self.emit(EventKind.WAVE_STARTED, wave=wave, target=self.targets()[wave])
        self.top_up()
        self.judge_when_ready(judging=False)

    def judge_when_ready(self, *, judging: bool = True) -> None:
        state, policy = self.state, self.state.policy
        wave_devices = [
            (a.device_id, a.assigned_at_s) for a in state.assignments if a.wave == state.wave
        ]
        tally = tally_wave(
            wave_devices,
            self.observations.reports,
            now_s=self.now_s,
            report_timeout_s=policy.report_timeout_s,
        )
        targets = self.targets()
        planned = targets[state.wave] - (targets[state.wave - 1] if state.wave else 0)
        # The canary, and any wave that should add devices, needs one settled device at least.
        required = max(1, policy.min_reporting.of(planned)) if planned or not state.wave else 0
        settled = tally.devices - tally.pending
        started_s = self.now_s if state.wave_started_s is None else state.wave_started_s
        soak_left_s = started_s + policy.soak_s - self.now_s
        if tally.pending or settled < required:
            self.update(status=RolloutStatus.RUNNING)
            self.notes.append(f"waiting: {tally.pending} devices pending, {settled} settled")
            self.notes.append(f"{required} settled devices required to judge the wave")
        elif soak_left_s > 0 and state.promoted_wave != state.wave:
            self.update(status=RolloutStatus.SOAKING)
            self.notes.append(f"soaking: {soak_left_s:g} s left")
        elif judging:
            self.judge(tally)

    def judge(self, tally: WaveTally) -> None:
        policy, wave = self.state.policy, self.state.wave
        self.gates = evaluate_gates(
            tally,
            new=self.observations.new_health,
            control=self.observations.control_health,
            thresholds=policy.gates,
            require_observed=policy.require_observed,
        )
        failed = [gate.name for gate in self.gates if not gate.passed]
        if not failed:
            self.wave_passed(self.gates, overridden=False)
            return
        judgement = WaveJudgement(wave, self.now_s, False, self.gates)
        self.update(judgements=(*self.state.judgements, judgement))
        self.emit(EventKind.GATE_FAILED, wave=wave, gates=failed)
        if policy.on_failure is OnFailure.PAUSE:
            self.update(status=RolloutStatus.PAUSED, pause_reason=PauseReason.GATES)
            self.emit(EventKind.ROLLOUT_PAUSED, reason="gates", wave=wave)
        else:
            self.abort("gates")

    def wave_passed(self, gates: tuple[GateResult, ...], *, overridden: bool) -> None:
        wave = self.state.wave
        judgement = WaveJudgement(wave, self.now_s, True, gates, overridden)
        self.update(judgements=(*self.state.judgements, judgement))
        self.emit(EventKind.WAVE_PASSED, wave=wave, overridden=overridden)
        if wave + 1 < len(self.state.policy.waves):
            self.start_wave(wave + 1)
        else:
            self.update(status=RolloutStatus.COMPLETED)
            self.emit(EventKind.ROLLOUT_COMPLETED, devices=len(self.state.assignments))

    def abort(self, reason: str) -> None:
        reports, wave = self.observations.reports, self.state.wave
        back = tuple(
            a.device_id
            for a in self.state.assignments
            if a.device_id not in reports or reports[a.device_id].outcome not in _SELF_REVERTED
        )
        self.update(status=RolloutStatus.ABORTED, pause_reason=None, rolled_back=back)
        if back:
            self.actions.append(RollbackDevices(back, self.state.last_good))
        self.emit(EventKind.ROLLOUT_ABORTED, reason=reason, wave=wave, rolled_back=len(back))


_ACTIVE = (RolloutStatus.RUNNING, RolloutStatus.SOAKING)
_SELF_REVERTED = (DeviceOutcome.FAILED, DeviceOutcome.ROLLED_BACK)
