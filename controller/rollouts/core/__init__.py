"""Fleet rollouts, the pure core: policy, observations, gates and the planner.

Nothing here does I/O or reads a clock. A loop elsewhere loads a ``RolloutState`` and
gathers ``Observations``, calls ``plan(state, observations, now_s=...)``, stores the new
state with its actions in one transaction, then carries the actions out (sign and publish
deployments, order rollbacks, send webhooks). This namespace is the public API; the
submodules are its implementation.
"""

from .gates import (
    CommandKind,
    DeviceOutcome,
    DeviceReport,
    DeviceView,
    FleetHealth,
    Observations,
    OperatorCommand,
    WaveTally,
    evaluate_gates,
    health_groups,
    tally_wave,
)
from .planner import (
    SHADOW_STAGE,
    Action,
    AssignDevices,
    EmitEvent,
    EventKind,
    Plan,
    RollbackDevices,
    ShadowDevices,
    StopShadow,
    plan,
)
from .shadow import ShadowHealth, ShadowPolicy, evaluate_shadow_gates
from .waves import (
    MAX_WAVES,
    Assignment,
    GateResult,
    GateThresholds,
    OnFailure,
    PauseReason,
    Quota,
    RolloutPolicy,
    RolloutSpecError,
    RolloutState,
    RolloutStatus,
    WaveJudgement,
    format_duration,
    parse_duration,
    parse_quota,
    parse_waves,
    wave_targets,
)

__all__ = [
    "MAX_WAVES",
    "SHADOW_STAGE",
    "Action",
    "AssignDevices",
    "Assignment",
    "CommandKind",
    "DeviceOutcome",
    "DeviceReport",
    "DeviceView",
    "EmitEvent",
    "EventKind",
    "FleetHealth",
    "GateResult",
    "GateThresholds",
    "Observations",
    "OnFailure",
    "OperatorCommand",
    "PauseReason",
    "Plan",
    "Quota",
    "RollbackDevices",
    "RolloutPolicy",
    "RolloutSpecError",
    "RolloutState",
    "RolloutStatus",
    "ShadowDevices",
    "ShadowHealth",
    "ShadowPolicy",
    "StopShadow",
    "WaveJudgement",
    "WaveTally",
    "evaluate_gates",
    "evaluate_shadow_gates",
    "format_duration",
    "health_groups",
    "parse_duration",
    "parse_quota",
    "parse_waves",
    "plan",
    "tally_wave",
    "wave_targets",
]
