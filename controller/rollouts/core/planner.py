"""The rollout planner: state and observations in, the next state and actions out.

Pure and deterministic: no I/O, no clock; ``now_s`` (wall-clock seconds, as it is compared
with stored times) is passed in.

| status           | condition                                  | next                          |
| ---------------- | ------------------------------------------ | ----------------------------- |
| PENDING          | a shadow stage in the policy, not started  | SHADOW: shadow orders go out  |
|                  | otherwise                                  | wave 0 starts: RUNNING        |
| SHADOW           | -                                          | top the shadow devices up     |
|                  | duration not over (and not promoted)       | SHADOW (wait)                 |
|                  | fewer than min_samples, deadline not over  | SHADOW (wait)                 |
|                  | judged: every shadow gate passed           | stop shadows, wave 0 starts   |
|                  | judged: a shadow gate failed               | stop shadows; PAUSED/ABORTED  |
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
- the shadow stage orders only devices that serve another release of the model (there is
  something to compare with); it never assigns the release, so it never needs a rollback:
  it ends by stopping every shadow it ordered (``StopShadow``), whatever its verdict, and
  its orders also end by themselves at ``shadow_deadline_s``;
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
from .shadow import ShadowHealth, evaluate_shadow_gates
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
    "ShadowDevices",
    "StopShadow",
    "plan",
]


class EventKind(StrEnum):
    SHADOW_STARTED = "shadow_started"
    SHADOW_PASSED = "shadow_passed"
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
class ShadowDevices:
    """Order each device to run ``release`` as a shadow of what it serves, until ``until_s``."""

    device_ids: tuple[str, ...]
    release: ReleaseRef
    until_s: float
    max_cpu_fraction: float


@dataclass(frozen=True)
class StopShadow:
    """Order each device to stop its shadow of the rollout's model."""

    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class EmitEvent:
    """An event for webhooks and the audit trail; ``details`` holds ``rollout_id``."""

    kind: EventKind
    details: Mapping[str, Any]


Action = AssignDevices | RollbackDevices | ShadowDevices | StopShadow | EmitEvent


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
        elif kind is CommandKind.PAUSE and status in (RolloutStatus.PENDING, *_LIVE):
            self.update(status=RolloutStatus.PAUSED, pause_reason=PauseReason.OPERATOR)
            self.emit(EventKind.ROLLOUT_PAUSED, reason="operator", wave=wave)
        elif kind is CommandKind.PROMOTE and status is RolloutStatus.SHADOW:
            self.update(shadow_promoted=True)
            self.emit(EventKind.WAVE_PROMOTED, stage="shadow")
        elif kind is CommandKind.PROMOTE and status in _ACTIVE:
            self.update(promoted_wave=wave)
            self.emit(EventKind.WAVE_PROMOTED, wave=wave)
        elif kind is CommandKind.RESUME and status is RolloutStatus.PAUSED:
            self.resume()
        else:
            self.notes.append(f"{kind} ignored: the rollout is {status}")

    def resume(self) -> None:
        state, reason = self.state, self.state.pause_reason
        if state.wave_started_s is not None:
            resumed = RolloutStatus.RUNNING
        elif state.shadow_running:
            resumed = RolloutStatus.SHADOW
        else:
            resumed = RolloutStatus.PENDING
        self.update(status=resumed, pause_reason=None)
        self.emit(EventKind.ROLLOUT_RESUMED, wave=state.wave)
        if reason is not PauseReason.GATES:
            return
        if state.wave_started_s is None:
            # The shadow stage's gates failed: the operator accepts it; the canary starts.
            self.shadow_passed(self.state.shadow_judgement, overridden=True)
        else:
            self.wave_passed((), overridden=True)

    def advance(self) -> None:
        status = self.state.status
        if status is RolloutStatus.PENDING:
            shadow = self.state.policy.shadow
            if shadow is not None and self.state.shadow_started_s is None:
                self.start_shadow()
            else:
                self.start_wave(0)
        elif status is RolloutStatus.SHADOW:
            self.top_up_shadow()
            self.judge_shadow_when_ready()
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
        chosen: dict[str, None] = {}  # ordered, and a set: a wave may take 10,000 devices
        for device in devices:
            wanted = device.online and device.release != release and len(chosen) < room
            if wanted and device.device_id not in assigned and device.device_id not in chosen:
                chosen[device.device_id] = None
        if room > len(chosen):
            self.notes.append(f"{room - len(chosen)} more devices wanted, none online to take")
        if chosen:
            added = tuple(Assignment(device_id, wave, self.now_s) for device_id in chosen)
            self.update(assignments=self.state.assignments + added)
            self.actions.append(AssignDevices(tuple(chosen), release, wave))

    # -- the shadow stage ---------------------------------------------------------------

    def shadow_deadline_s(self) -> float:
        """When the stage is judged whatever it has, and when the devices' orders end."""
        policy, started = self.state.policy, self.state.shadow_started_s
        assert policy.shadow is not None
        assert started is not None
        return started + policy.shadow.duration_s + policy.report_timeout_s

    def start_shadow(self) -> None:
        self.update(status=RolloutStatus.SHADOW, shadow_started_s=self.now_s)
        self.emit(EventKind.SHADOW_STARTED, target=self.shadow_target())
        self.top_up_shadow()
        self.judge_shadow_when_ready()

    def shadow_candidates(self) -> list[str]:
        """Matching devices that serve the model, but not this release (something to compare
        with), and have no deployment of it pending (a shadow order would replace it)."""
        release = self.state.release
        return [
            d.device_id
            for d in self.observations.devices
            if d.release is not None and d.release != release and not d.update_pending
        ]

    def shadow_target(self) -> int:
        policy = self.state.policy.shadow
        assert policy is not None
        return policy.devices.of(len(self.shadow_candidates()))

    def top_up_shadow(self) -> None:
        """Order online devices, in the caller's order, to shadow up to the stage's target."""
        policy, started = self.state.policy.shadow, self.state.shadow_started_s
        assert policy is not None
        assert started is not None
        if self.now_s >= started + policy.duration_s:
            return  # an order now would end before the device could sample anything
        candidates = set(self.shadow_candidates())
        online = {d.device_id for d in self.observations.devices if d.online}
        chosen_before = self.state.shadow_devices
        room = self.shadow_target() - len(candidates & set(chosen_before))
        chosen = [
            device_id
            for device_id in self.shadow_candidates()
            if device_id in online and device_id not in chosen_before
        ][: max(room, 0)]
        if chosen:
            self.update(shadow_devices=chosen_before + tuple(chosen))
            self.actions.append(
                ShadowDevices(
                    tuple(chosen),
                    self.state.release,
                    self.shadow_deadline_s(),
                    policy.max_cpu_fraction,
                )
            )

    def judge_shadow_when_ready(self) -> None:
        state, policy = self.state, self.state.policy.shadow
        assert policy is not None
        assert state.shadow_started_s is not None
        health = self.observations.shadow_health
        samples = 0 if health is None else health.samples
        left_s = state.shadow_started_s + policy.duration_s - self.now_s
        # No device serves another release of the model: nothing to shadow beside, so the
        # stage is judged at once (every gate skipped, saying so) rather than waited out.
        nothing_to_compare = not state.shadow_devices and self.shadow_target() == 0
        if not state.shadow_promoted and not nothing_to_compare:
            if left_s > 0:
                self.notes.append(
                    f"shadowing on {len(state.shadow_devices)} devices: {left_s:g} s left, "
                    f"{samples} samples"
                )
                return
            if samples < policy.min_samples and self.now_s < self.shadow_deadline_s():
                self.notes.append(
                    f"shadowing: {samples} samples of the {policy.min_samples} wanted; judged "
                    f"with what there is in {self.shadow_deadline_s() - self.now_s:g} s"
                )
                return
        gates = evaluate_shadow_gates(health or ShadowHealth(), policy)
        self.gates = gates
        failed = [gate.name for gate in gates if not gate.passed]
        judgement = WaveJudgement(SHADOW_STAGE, self.now_s, not failed, gates)
        if not failed:
            self.shadow_passed(judgement, overridden=False)
            return
        self.update(shadow_judgement=judgement)
        self.stop_shadow()
        self.emit(EventKind.GATE_FAILED, stage="shadow", gates=failed)
        if state.policy.on_failure is OnFailure.PAUSE:
            self.update(status=RolloutStatus.PAUSED, pause_reason=PauseReason.GATES)
            self.emit(EventKind.ROLLOUT_PAUSED, reason="gates", stage="shadow")
        else:
            self.abort("gates")

    def shadow_passed(self, judgement: WaveJudgement | None, *, overridden: bool) -> None:
        gates = () if judgement is None else judgement.gates
        self.update(
            shadow_judgement=WaveJudgement(SHADOW_STAGE, self.now_s, True, gates, overridden)
        )
        self.stop_shadow()
        self.emit(EventKind.SHADOW_PASSED, overridden=overridden)
        self.start_wave(0)

    def stop_shadow(self) -> None:
        if self.state.shadow_devices:
            self.actions.append(StopShadow(self.state.shadow_devices))

    # -- waves -------------------------------------------------------------------------

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
        if self.state.shadow_running:
            self.stop_shadow()
            ended = WaveJudgement(SHADOW_STAGE, self.now_s, False, ())
            self.update(shadow_judgement=ended)
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
_LIVE = (RolloutStatus.SHADOW, *_ACTIVE)
# The wave number a shadow stage's judgement carries: it comes before wave 0.
SHADOW_STAGE = -1
_SELF_REVERTED = (DeviceOutcome.FAILED, DeviceOutcome.ROLLED_BACK)
