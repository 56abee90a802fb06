"""A rollout as it is stored: its policy and its state, with the parsers for what operators
type (waves ``1,10%,50%,100%``, durations ``5m`` or ``1h30m``, quotas ``3`` or ``80%``).

Invariants:
- a ``Quota`` is a device count or a percentage of a group, never both; percentages are
  exact decimals (``12.5%``), so ``10%`` of 20 devices is 2, never 3 by a float's error;
- wave targets are cumulative device counts: non-decreasing, never above the fleet size,
  at least 1 per wave when the fleet is non-empty, and the fleet size itself for a
  ``100%`` wave; wave sizes of one kind strictly grow, and nothing follows ``100%``;
- policies and states are immutable values that check themselves; the planner returns a
  new ``RolloutState`` rather than changing one, and ``assignments`` only ever grows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

from protocol import ReleaseRef

if TYPE_CHECKING:  # shadow.py builds on this module's types
    from .shadow import ShadowPolicy

__all__ = [
    "MAX_WAVES",
    "Assignment",
    "GateResult",
    "GateThresholds",
    "OnFailure",
    "PauseReason",
    "Quota",
    "RolloutPolicy",
    "RolloutSpecError",
    "RolloutState",
    "RolloutStatus",
    "WaveJudgement",
    "format_duration",
    "parse_duration",
    "parse_quota",
    "parse_waves",
    "wave_targets",
]

MAX_WAVES = 100
_QUOTA = re.compile(r"^(?P<number>\d+(?:\.\d{1,3})?)(?P<percent>%?)$")
_DURATION = re.compile(
    r"^(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+(?:\.\d+)?)s)?$"
)
_UNIT_S = {"d": 86400, "h": 3600, "m": 60}


class RolloutSpecError(ValueError):
    """A wave list, quota, duration or rollout policy that is not valid.

    The core's own error, so it imports nothing of the controller; the API answers it
    with 400 like a ``BadRequestError``.
    """


@dataclass(frozen=True)
class Quota:
    """A number of devices: ``count`` devices, or ``percent`` of a group (rounded up)."""

    count: int | None = None
    percent: Decimal | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.percent is None):
            raise RolloutSpecError("a quota is a count or a percentage, exactly one of them")
        if self.count is not None and self.count < 0:
            raise RolloutSpecError(f"a device count cannot be negative: {self.count}")
        if self.percent is not None and not 0 < self.percent <= 100:
            raise RolloutSpecError(f"a percentage must be above 0 and at most 100: {self.percent}")

    @property
    def is_everything(self) -> bool:
        return self.percent == 100

    def of(self, total: int) -> int:
        """How many of ``total`` devices this quota asks for (never more than ``total``)."""
        if self.percent is not None:
            return min(total, math.ceil(self.percent * total / 100))
        return min(total, self.count or 0)

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.count)


def parse_quota(text: str) -> Quota:
    """``"3"`` is three devices; ``"80%"`` or ``"12.5%"`` a share of the group."""
    match = _QUOTA.match(text.strip())
    if match is None:
        raise RolloutSpecError(f"{text!r} is not a device count or a percentage like 10%")
    if match["percent"]:
        return Quota(percent=Decimal(match["number"]))
    if "." in match["number"]:
        raise RolloutSpecError(f"{text!r}: a device count is a whole number")
    return Quota(count=int(match["number"]))


def parse_waves(text: str) -> tuple[Quota, ...]:
    """Parse cumulative wave sizes, e.g. ``1,10%,50%,100%``: a canary, then growing shares."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or len(parts) > MAX_WAVES:
        raise RolloutSpecError(f"waves: give 1 to {MAX_WAVES} sizes, e.g. 1,10%,50%,100%")
    waves: list[Quota] = []
    for index, part in enumerate(parts, start=1):
        try:
            wave = parse_quota(part)
        except RolloutSpecError as exc:
            raise RolloutSpecError(f"wave {index}: {exc}") from exc
        if wave.count == 0:
            raise RolloutSpecError(f"wave {index}: a wave needs at least one device")
        if waves and waves[-1].is_everything:
            raise RolloutSpecError(f"wave {index}: nothing can follow a 100% wave")
        same_kind = [w for w in waves if (w.count is None) == (wave.count is None)]
        if same_kind and _amount(same_kind[-1]) >= _amount(wave):
            raise RolloutSpecError(
                f"wave {index}: {wave} does not grow from {same_kind[-1]} (sizes are cumulative)"
            )
        waves.append(wave)
    return tuple(waves)


def _amount(quota: Quota) -> Decimal:
    return quota.percent if quota.percent is not None else Decimal(quota.count or 0)


def wave_targets(waves: Sequence[Quota], fleet_size: int) -> list[int]:
    """Cumulative device counts per wave for a fleet of ``fleet_size`` devices.

    A small fleet may give two waves the same target: the later wave then adds no device
    and is one more soak of the devices already updated.
    """
    if fleet_size < 0:
        raise RolloutSpecError(f"fleet size cannot be negative: {fleet_size}")
    floor = 1 if fleet_size else 0
    targets: list[int] = []
    for wave in waves:
        floor = max(floor, min(fleet_size, wave.of(fleet_size)))
        targets.append(floor)
    return targets


def parse_duration(text: str) -> float:
    """Seconds in ``"30s"``, ``"5m"``, ``"2h"``, ``"1h30m"``, ``"1d"`` or a bare ``"90"``."""
    cleaned = text.strip()
    try:
        seconds = float(cleaned)
    except ValueError:
        match = _DURATION.match(cleaned)
        if not cleaned or match is None:
            raise RolloutSpecError(
                f"{text!r} is not a duration like 30s, 5m, 2h or 1h30m"
            ) from None
        seconds = float(match["s"] or 0) + sum(
            int(match[unit]) * factor for unit, factor in _UNIT_S.items() if match[unit]
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise RolloutSpecError(f"{text!r} is not a duration of zero or more seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse of ``parse_duration`` for whole seconds: 5400 -> ``"1h30m"``."""
    rest = round(seconds)
    parts = []
    for unit, factor in _UNIT_S.items():
        if rest >= factor:
            parts.append(f"{rest // factor}{unit}")
            rest %= factor
    if rest or not parts:
        parts.append(f"{rest}s")
    return "".join(parts)


@dataclass(frozen=True)
class GateThresholds:
    """The largest value each gate allows (``None`` disables the gate)."""

    max_failure_rate: float | None = 0.0
    max_rollback_rate: float | None = 0.0
    max_p95_latency_ratio: float | None = 1.5
    # The ratio is judged only when p95 is also this many ms above the control group's:
    # below a millisecond a busy CPU moves p95 more than the model does.
    min_p95_latency_increase_ms: float = 1.0
    max_error_rate: float | None = 0.01
    max_nonfinite_rate: float | None = 0.0
    max_confidence_drop: float | None = 0.1
    max_drift_psi: float | None = 0.25
    # The least drop of accuracy on labeled requests the labels support (its lower
    # confidence bound, ``tensors.accuracy``), updated devices against the control group.
    max_label_accuracy_drop: float | None = 0.05
    # Fewer requests than this in a group is no evidence about the model's health.
    min_health_requests: int = 100

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and not value >= 0:  # NaN too
                raise RolloutSpecError(f"{name} must be zero or more: {value}")


class OnFailure(StrEnum):
    PAUSE = "pause"
    ABORT = "abort"


@dataclass(frozen=True)
class RolloutPolicy:
    """How a rollout proceeds: wave sizes, how long each is watched, and its gates."""

    waves: tuple[Quota, ...]
    soak_s: float = 300.0
    # Devices of a wave that must have settled (final outcome or timed out) to judge it.
    min_reporting: Quota = field(default_factory=lambda: Quota(count=1))
    report_timeout_s: float = 1800.0
    on_failure: OnFailure = OnFailure.ABORT
    # Commits that probation reports as unobserved count as failures when this is set.
    require_observed: bool = False
    gates: GateThresholds = field(default_factory=GateThresholds)
    # A shadow stage before the first wave (``core.shadow``); None: the canary comes first.
    shadow: ShadowPolicy | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.waves) <= MAX_WAVES:
            raise RolloutSpecError(f"a rollout has 1 to {MAX_WAVES} waves")
        if not (math.isfinite(self.soak_s) and self.soak_s >= 0):
            raise RolloutSpecError(f"soak_s must be zero or more: {self.soak_s}")
        if not (math.isfinite(self.report_timeout_s) and self.report_timeout_s > 0):
            raise RolloutSpecError(f"report_timeout_s must be above 0: {self.report_timeout_s}")


@dataclass(frozen=True)
class GateResult:
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class WaveJudgement:
    """A wave's verdict; ``overridden`` when the operator resumed past failed gates."""

    wave: int
    at_s: float
    passed: bool
    gates: tuple[GateResult, ...]
    overridden: bool = False


class RolloutStatus(StrEnum):
    PENDING = "pending"
    SHADOW = "shadow"  # the release runs as a shadow on some devices, before wave 0
    RUNNING = "running"  # waiting for the current wave's devices
    SOAKING = "soaking"  # the wave's devices settled; waiting for its soak to end
    PAUSED = "paused"
    ABORTED = "aborted"
    COMPLETED = "completed"


class PauseReason(StrEnum):
    OPERATOR = "operator"
    GATES = "gates"


@dataclass(frozen=True)
class Assignment:
    device_id: str
    wave: int
    assigned_at_s: float


@dataclass(frozen=True)
class RolloutState:
    """Where a rollout stands; ``plan`` returns the next one and never changes this."""

    rollout_id: str
    release: ReleaseRef
    last_good: ReleaseRef | None  # None: the devices ran no model of this name before
    policy: RolloutPolicy
    status: RolloutStatus = RolloutStatus.PENDING
    wave: int = 0
    wave_started_s: float | None = None
    assignments: tuple[Assignment, ...] = ()  # every device ever targeted, in order
    promoted_wave: int | None = None
    pause_reason: PauseReason | None = None
    last_command_id: int = 0
    judgements: tuple[WaveJudgement, ...] = ()
    rolled_back: tuple[str, ...] = ()  # devices the abort ordered back to last_good
    # The shadow stage: devices ordered to shadow the release (in order), when it
    # started, whether the operator promoted it, and its verdict once judged.
    shadow_devices: tuple[str, ...] = ()
    shadow_started_s: float | None = None
    shadow_promoted: bool = False
    shadow_judgement: WaveJudgement | None = None

    @property
    def shadow_running(self) -> bool:
        """Shadow orders are out and the stage has not ended."""
        return self.shadow_started_s is not None and self.shadow_judgement is None

    def __post_init__(self) -> None:
        if not 0 <= self.wave < len(self.policy.waves):
            raise RolloutSpecError(f"wave {self.wave} is not one of the policy's waves")

    @property
    def assigned_ids(self) -> frozenset[str]:
        return frozenset(a.device_id for a in self.assignments)

    def assigned_in_wave(self, wave: int) -> tuple[str, ...]:
        return tuple(a.device_id for a in self.assignments if a.wave == wave)
