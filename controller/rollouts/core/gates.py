"""What a rollout observes, and the gates that judge one of its waves.

Pure: device outcomes, health summaries and thresholds in, ``GateResult``s out.

Invariants:
- a threshold is the largest value allowed, as on devices: a gate fails when the measured
  value is strictly greater, so a threshold of 0 allows none; ``None`` disables a gate;
- a device without a final outcome ``report_timeout_s`` after it was assigned (or whose
  outcome arrived later than that) is timed out and counts as failed, never as passed;
- commits that probation reported as unobserved are counted apart; with
  ``require_observed`` they count as failures, otherwise as passes;
- model-health gates read the devices updated by the rollout (``new``) and the devices of
  the same selector still on the previous release (``control``). Error rate and
  non-finite rate are absolute limits (the control's figure is shown beside them); the p95
  latency ratio and the confidence drop compare with the control and are skipped, saying
  so, when it has too little data; all are skipped when ``new`` has too little;
- drift is the model's, never the data's. Devices report only *output* drift to gates
  (``TelemetryWindow.output_drift_psi``), only for windows of at least
  ``tensors.MIN_DRIFT_REQUESTS`` requests (the devices' own minimum) against a reference
  profile of validation data. Input drift is a property of the data: the previous release
  sees the same inputs, so it never fails a wave. The ``drift_psi`` gate weighs the new
  release's output drift *in excess of the control group's*, each against its own
  release's reference: when the world moves, both move and the excess stays small; a
  broken release moves alone. Without a control figure there is nothing to tell the
  data's drift from the release's, and the gate is skipped with a note saying so;
- accuracy on labeled requests (the applications' feedback) is compared with the
  control group's only from ``tensors.accuracy.MIN_LABELED`` labels on each side, and
  the gate reads the drop's lower confidence bound: labels are few, and noise alone
  must not fail a good release.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from protocol import ReleaseRef
from tensors.accuracy import MIN_LABELED, accuracy_drop
from tensors.profile import MIN_DRIFT_REQUESTS, MIN_DRIFT_VALUES

from .shadow import ShadowHealth
from .waves import GateResult, GateThresholds, RolloutSpecError

__all__ = [
    "CommandKind",
    "DeviceOutcome",
    "DeviceReport",
    "DeviceView",
    "FleetHealth",
    "Observations",
    "OperatorCommand",
    "WaveTally",
    "evaluate_gates",
    "health_groups",
    "tally_wave",
]


class DeviceOutcome(StrEnum):
    PENDING = "pending"
    COMMITTED = "committed"
    COMMITTED_UNOBSERVED = "committed_unobserved"
    FAILED = "failed"  # before activation: the device still runs its previous model
    ROLLED_BACK = "rolled_back"  # by the device itself, during probation


@dataclass(frozen=True)
class DeviceReport:
    """A device's outcome for this rollout; ``reported_at_s`` is when the controller got it."""

    outcome: DeviceOutcome
    reported_at_s: float | None = None

    def __post_init__(self) -> None:
        if self.outcome is not DeviceOutcome.PENDING and self.reported_at_s is None:
            raise RolloutSpecError(f"a {self.outcome} report needs its reported_at_s")


@dataclass(frozen=True)
class FleetHealth:
    """Model health over a group of devices; a figure is ``None`` when nobody measured it."""

    devices: int = 0
    requests: int = 0
    error_rate: float | None = None
    nonfinite_rate: float | None = None
    p95_ms: float | None = None
    confidence_mean: float | None = None
    max_drift_psi: float | None = None
    # Values the drift figure was read from, pooled over the group's windows (None: the
    # figure is the worst single window's, from devices that send no counts).
    drift_values: int | None = None
    # The worst input's PSI, pooled likewise: the data's drift, for alerts, never a gate.
    max_input_drift_psi: float | None = None
    # Requests the applications labeled (their feedback) and the share the model got right.
    labeled: int = 0
    label_accuracy: float | None = None


@dataclass(frozen=True)
class DeviceView:
    """A device matching the rollout's selector, as it last reported itself."""

    device_id: str
    online: bool
    release: ReleaseRef | None = None
    # A deployment of the model signed for the device and not yet accepted by it.
    update_pending: bool = False


class CommandKind(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    PROMOTE = "promote"


@dataclass(frozen=True)
class OperatorCommand:
    command_id: int  # increasing per rollout; the planner applies each command once
    kind: CommandKind


@dataclass(frozen=True)
class Observations:
    """What the controller knows now; ``reports`` is keyed by device id."""

    devices: tuple[DeviceView, ...] = ()  # every matching device, in a stable order
    reports: Mapping[str, DeviceReport] = field(default_factory=dict)
    new_health: FleetHealth | None = None  # devices this rollout updated
    control_health: FleetHealth | None = None  # matching devices still on last_good
    commands: tuple[OperatorCommand, ...] = ()
    shadow_health: ShadowHealth | None = None  # the shadow stage's devices, since it started


@dataclass(frozen=True)
class WaveTally:
    """Outcomes of one wave's devices; each device is counted in exactly one field."""

    committed: int = 0
    unobserved: int = 0
    failed: int = 0
    rolled_back: int = 0
    timed_out: int = 0
    pending: int = 0  # no final outcome yet, and still within the report timeout

    @property
    def devices(self) -> int:
        return self.reported + self.timed_out + self.pending

    @property
    def reported(self) -> int:
        """Devices with a final outcome that arrived in time."""
        return self.committed + self.unobserved + self.failed + self.rolled_back


def health_groups(
    devices: Sequence[DeviceView],
    *,
    assigned: Collection[str],
    release: ReleaseRef,
    last_good: ReleaseRef | None,
) -> tuple[list[str], list[str]]:
    """The device ids whose telemetry makes ``new_health`` and ``control_health``.

    New: devices the rollout assigned that run its release. Control: matching devices it
    did not assign that still run ``last_good``.
    """
    new = [d.device_id for d in devices if d.device_id in assigned and d.release == release]
    control = [
        d.device_id
        for d in devices
        if d.device_id not in assigned and d.release is not None and d.release == last_good
    ]
    return new, control


def tally_wave(
    assigned: Iterable[tuple[str, float]],
    reports: Mapping[str, DeviceReport],
    *,
    now_s: float,
    report_timeout_s: float,
) -> WaveTally:
    """Count outcomes of ``(device_id, assigned_at_s)`` pairs as of ``now_s``."""
    counts = dict.fromkeys(("committed", "unobserved", "failed", "rolled_back"), 0)
    timed_out = pending = 0
    for device_id, assigned_at_s in assigned:
        report = reports.get(device_id, DeviceReport(DeviceOutcome.PENDING))
        deadline_s = assigned_at_s + report_timeout_s
        if report.outcome is DeviceOutcome.PENDING or report.reported_at_s is None:
            if now_s >= deadline_s:
                timed_out += 1
            else:
                pending += 1
        elif report.reported_at_s > deadline_s:
            timed_out += 1
        else:
            counts[_FIELD_BY_OUTCOME[report.outcome]] += 1
    return WaveTally(**counts, timed_out=timed_out, pending=pending)


_FIELD_BY_OUTCOME = {
    DeviceOutcome.COMMITTED: "committed",
    DeviceOutcome.COMMITTED_UNOBSERVED: "unobserved",
    DeviceOutcome.FAILED: "failed",
    DeviceOutcome.ROLLED_BACK: "rolled_back",
}


def evaluate_gates(
    tally: WaveTally,
    *,
    new: FleetHealth | None,
    control: FleetHealth | None,
    thresholds: GateThresholds,
    require_observed: bool,
) -> tuple[GateResult, ...]:
    """Every gate of a wave, in a fixed order, passed or not, with its numbers."""
    unobserved_failed = tally.unobserved if require_observed else 0
    failures = tally.failed + tally.rolled_back + tally.timed_out + unobserved_failed
    counted = " (counted as failed: observed commits required)" if require_observed else ""
    failure_note = (
        f"{tally.failed} failed, {tally.rolled_back} rolled back, {tally.timed_out} timed out, "
        f"{tally.unobserved} committed unobserved{counted}"
    )
    rates = []
    for name, count, limit, note in (
        ("failure_rate", failures, thresholds.max_failure_rate, failure_note),
        ("rollback_rate", tally.rolled_back, thresholds.max_rollback_rate, "rolled back"),
    ):
        if tally.devices:
            rates.append(_gate(name, count / tally.devices, limit, f"{note}, of {tally.devices}"))
        else:
            rates.append(_gate(name, None, limit, "skipped: no devices in this wave"))
    return (*rates, *_health_gates(new, control, thresholds))


def _health_gates(
    new: FleetHealth | None, control: FleetHealth | None, thresholds: GateThresholds
) -> list[GateResult]:
    minimum = thresholds.min_health_requests
    limits = {
        "error_rate": thresholds.max_error_rate,
        "nonfinite_rate": thresholds.max_nonfinite_rate,
        "p95_latency_ratio": thresholds.max_p95_latency_ratio,
        "confidence_drop": thresholds.max_confidence_drop,
        "drift_psi": thresholds.max_drift_psi,
        "label_accuracy_drop": thresholds.max_label_accuracy_drop,
    }
    if new is None or new.requests < minimum:
        served = 0 if new is None else new.requests
        note = f"skipped: updated devices served {served} requests, fewer than {minimum}"
        return [_gate(name, None, limit, note) for name, limit in limits.items()]
    measured = {
        "error_rate": (new.error_rate, _control_figure(control, "error_rate")),
        "nonfinite_rate": (new.nonfinite_rate, _control_figure(control, "nonfinite_rate")),
        **_relative(new, control, thresholds),
        "drift_psi": _drift_excess(new, control),
        "label_accuracy_drop": _label_accuracy_drop(new, control),
    }
    results = [
        _gate(name, measured[name][0], limit, measured[name][1]) for name, limit in limits.items()
    ]
    if _within_latency_floor(new, control, thresholds.min_p95_latency_increase_ms):
        results = [
            replace(result, passed=True) if result.name == "p95_latency_ratio" else result
            for result in results
        ]
    return results


def _relative(
    new: FleetHealth, control: FleetHealth | None, thresholds: GateThresholds
) -> dict[str, tuple[float | None, str]]:
    """The gates that compare with the control group: p95 latency ratio, confidence drop."""
    minimum = thresholds.min_health_requests
    if control is None or control.devices == 0:
        note = "skipped: no control group data (no device of the selector on the previous release)"
        return dict.fromkeys(("p95_latency_ratio", "confidence_drop"), (None, note))
    if control.requests < minimum:
        note = (
            f"skipped: the control group served {control.requests} requests, fewer than {minimum}"
        )
        return dict.fromkeys(("p95_latency_ratio", "confidence_drop"), (None, note))
    drop = None
    if new.confidence_mean is not None and control.confidence_mean is not None:
        drop = control.confidence_mean - new.confidence_mean
    return {
        "p95_latency_ratio": _latency_ratio(new, control, thresholds.min_p95_latency_increase_ms),
        "confidence_drop": (
            drop,
            f"mean confidence {new.confidence_mean}, control {control.confidence_mean}",
        ),
    }


def _latency_ratio(
    new: FleetHealth, control: FleetHealth, floor_ms: float
) -> tuple[float | None, str]:
    note = f"p95 {new.p95_ms} ms, control {control.p95_ms} ms"
    if new.p95_ms is None or control.p95_ms is None or control.p95_ms <= 0:
        return None, note
    if _within_latency_floor(new, control, floor_ms):
        note += f", less than {floor_ms:g} ms apart: passes"
    return new.p95_ms / control.p95_ms, note


def _within_latency_floor(
    new: FleetHealth | None, control: FleetHealth | None, floor_ms: float
) -> bool:
    """Whether p95 is less than the floor above the control's: sub-millisecond differences
    are the CPU's scheduling, not the model, and never fail the ratio."""
    if new is None or control is None or new.p95_ms is None or control.p95_ms is None:
        return False
    return new.p95_ms - control.p95_ms < floor_ms


def _drift_excess(new: FleetHealth, control: FleetHealth | None) -> tuple[float | None, str]:
    """Output drift of the new release over the control group's (see the module doc)."""
    if new.max_drift_psi is None:
        return None, (
            f"skipped: no output drift judged on updated devices (at least "
            f"{MIN_DRIFT_REQUESTS} requests and {MIN_DRIFT_VALUES} values pooled, against a "
            "reference profile of validation data)"
        )
    if control is None or control.max_drift_psi is None:
        return None, (
            "skipped: no control group data to tell the data's drift from the release's "
            f"(output PSI {new.max_drift_psi:.3g}{_pooled(new)}); input drift is never the "
            "release's"
        )
    excess = new.max_drift_psi - control.max_drift_psi
    return excess, (
        f"output PSI {new.max_drift_psi:.3g}{_pooled(new)}, control "
        f"{control.max_drift_psi:.3g}{_pooled(control)}: excess {excess:.3g}"
    )


def _label_accuracy_drop(new: FleetHealth, control: FleetHealth | None) -> tuple[float | None, str]:
    """The least drop of accuracy on labeled requests the labels support, new vs control."""
    if control is None or control.devices == 0:
        return None, "skipped: no control group data to compare labeled accuracy with"
    drop = accuracy_drop(control.labeled, _correct(control), new.labeled, _correct(new))
    if drop is None:
        return None, (
            f"skipped: {new.labeled} labeled requests on updated devices, {control.labeled} "
            f"on the control group; {MIN_LABELED} needed on each"
        )
    return drop.lower_bound, (
        f"accuracy {drop.after:.4g} on {new.labeled} labels, control {drop.before:.4g} on "
        f"{control.labeled}: drop {drop.drop:.3g}, at least {drop.lower_bound:.3g} beyond noise"
    )


def _correct(health: FleetHealth) -> int:
    return round((health.label_accuracy or 0.0) * health.labeled)


def _pooled(health: FleetHealth) -> str:
    if health.drift_values is None:
        return " (worst window)"
    return f" over {health.drift_values} values from {health.devices} devices"


def _gate(name: str, value: float | None, threshold: float | None, note: str) -> GateResult:
    if threshold is None:
        return GateResult(name, value, None, True, "disabled")
    if value is None:
        skipped = note if note.startswith("skipped") else "skipped: not measured"
        return GateResult(name, None, threshold, True, skipped)
    return GateResult(name, value, threshold, value <= threshold, note)


def _control_figure(control: FleetHealth | None, field: str) -> str:
    """The control group's figure, for context: absolute gates do not depend on it."""
    value = None if control is None else getattr(control, field)
    return "control: no data" if value is None else f"control: {value:.4g}"
