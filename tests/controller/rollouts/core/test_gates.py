"""A wave's gates as tables: outcomes and health summaries in, gate results out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.rollouts.core import (
    DeviceOutcome,
    DeviceReport,
    DeviceView,
    FleetHealth,
    GateResult,
    GateThresholds,
    RolloutSpecError,
    WaveTally,
    evaluate_gates,
    health_groups,
    tally_wave,
)
from protocol import ReleaseRef
from tests.controller.rollouts.core.fleet import HEALTHY, NEW, OLD

TIMEOUT_S = 600.0
COMMITTED = DeviceOutcome.COMMITTED
UNOBSERVED = DeviceOutcome.COMMITTED_UNOBSERVED
FAILED = DeviceOutcome.FAILED
ROLLED_BACK = DeviceOutcome.ROLLED_BACK
PENDING = DeviceOutcome.PENDING


@pytest.mark.parametrize(
    ("report", "now_s", "tally"),
    [
        (None, 100.0, WaveTally(pending=1)),
        (DeviceReport(PENDING), 599.0, WaveTally(pending=1)),
        (None, 600.0, WaveTally(timed_out=1)),
        (DeviceReport(PENDING), 5000.0, WaveTally(timed_out=1)),
        (DeviceReport(COMMITTED, 30.0), 60.0, WaveTally(committed=1)),
        (DeviceReport(COMMITTED, 600.0), 700.0, WaveTally(committed=1)),
        (DeviceReport(COMMITTED, 601.0), 700.0, WaveTally(timed_out=1)),
        (DeviceReport(ROLLED_BACK, 601.0), 700.0, WaveTally(timed_out=1)),
        (DeviceReport(UNOBSERVED, 30.0), 60.0, WaveTally(unobserved=1)),
        (DeviceReport(FAILED, 30.0), 60.0, WaveTally(failed=1)),
        (DeviceReport(ROLLED_BACK, 30.0), 60.0, WaveTally(rolled_back=1)),
    ],
    ids=[
        "no_report_yet",
        "pending_just_before_timeout",
        "silent_at_timeout",
        "pending_long_after",
        "committed",
        "committed_exactly_at_timeout",
        "committed_too_late_counts_as_timed_out",
        "late_rollback_still_a_failure",
        "unobserved",
        "failed",
        "rolled_back",
    ],
)
def test_a_device_is_counted_once_and_silence_is_never_a_pass(
    report: DeviceReport | None, now_s: float, tally: WaveTally
) -> None:
    reports = {} if report is None else {"d00": report}

    counted = tally_wave([("d00", 0.0)], reports, now_s=now_s, report_timeout_s=TIMEOUT_S)

    assert counted == tally
    assert counted.devices == 1


def test_final_report_without_a_time_is_refused() -> None:
    with pytest.raises(RolloutSpecError, match="reported_at_s"):
        DeviceReport(COMMITTED)


def test_negative_threshold_is_refused() -> None:
    with pytest.raises(RolloutSpecError, match="max_error_rate must be zero or more"):
        GateThresholds(max_error_rate=-0.1)
    with pytest.raises(RolloutSpecError, match="max_drift_psi must be zero or more: nan"):
        GateThresholds(max_drift_psi=float("nan"))


def gates(
    tally: WaveTally,
    *,
    new: FleetHealth | None = HEALTHY,
    control: FleetHealth | None = HEALTHY,
    require_observed: bool = False,
    thresholds: GateThresholds | None = None,
) -> dict[str, GateResult]:
    results = evaluate_gates(
        tally,
        new=new,
        control=control,
        thresholds=thresholds or GateThresholds(),
        require_observed=require_observed,
    )
    return {result.name: result for result in results}


@pytest.mark.parametrize(
    ("tally", "require_observed", "thresholds", "failure_rate", "rollback_rate", "passed"),
    [
        (WaveTally(committed=10), False, None, 0.0, 0.0, True),
        (WaveTally(committed=9, rolled_back=1), False, None, 0.1, 0.1, False),
        (WaveTally(committed=9, failed=1), False, None, 0.1, 0.0, False),
        (WaveTally(committed=9, timed_out=1), False, None, 0.1, 0.0, False),
        (WaveTally(committed=9, unobserved=1), False, None, 0.0, 0.0, True),
        (WaveTally(committed=9, unobserved=1), True, None, 0.1, 0.0, False),
        (
            WaveTally(committed=9, timed_out=1),
            False,
            GateThresholds(max_failure_rate=0.1),
            0.1,
            0.0,
            True,
        ),
        (
            WaveTally(committed=8, timed_out=2),
            False,
            GateThresholds(max_failure_rate=0.1),
            0.2,
            0.0,
            False,
        ),
        (WaveTally(), False, None, None, None, True),
    ],
    ids=[
        "all_committed",
        "one_rolled_back",
        "one_failed",
        "one_timed_out",
        "unobserved_accepted",
        "unobserved_rejected_when_observed_required",
        "at_the_threshold_passes",
        "above_the_threshold_fails",
        "no_devices",
    ],
)
def test_outcome_gates(
    tally: WaveTally,
    require_observed: bool,
    thresholds: GateThresholds | None,
    failure_rate: float | None,
    rollback_rate: float | None,
    passed: bool,
) -> None:
    results = gates(tally, require_observed=require_observed, thresholds=thresholds)

    assert results["failure_rate"].value == pytest.approx(failure_rate)
    assert results["rollback_rate"].value == pytest.approx(rollback_rate)
    assert (results["failure_rate"].passed and results["rollback_rate"].passed) == passed
    assert f"{tally.unobserved} committed unobserved" in results["failure_rate"].note or (
        tally.devices == 0
    )


ALL_COMMITTED = WaveTally(committed=5)
NO_CONTROL = "skipped: no control group data"


@pytest.mark.parametrize(
    ("new", "control", "failing", "skipped", "note"),
    [
        (HEALTHY, HEALTHY, [], [], ""),
        (replace(HEALTHY, nonfinite_rate=0.001), HEALTHY, ["nonfinite_rate"], [], ""),
        (replace(HEALTHY, error_rate=0.05), HEALTHY, ["error_rate"], [], "control: 0.001"),
        (replace(HEALTHY, p95_ms=100.0), HEALTHY, ["p95_latency_ratio"], [], "p95 100.0 ms"),
        (replace(HEALTHY, p95_ms=15.0), HEALTHY, [], [], ""),
        (replace(HEALTHY, confidence_mean=0.7), HEALTHY, ["confidence_drop"], [], ""),
        (replace(HEALTHY, max_drift_psi=0.5), HEALTHY, ["drift_psi"], [], ""),
        (
            replace(HEALTHY, p95_ms=100.0),
            None,
            [],
            ["p95_latency_ratio", "confidence_drop", "drift_psi", "label_accuracy_drop"],
            NO_CONTROL,
        ),
        (
            replace(HEALTHY, p95_ms=100.0),
            FleetHealth(),
            [],
            ["p95_latency_ratio", "confidence_drop", "drift_psi", "label_accuracy_drop"],
            NO_CONTROL,
        ),
        (
            replace(HEALTHY, confidence_mean=0.5),
            replace(HEALTHY, requests=99),
            [],
            ["p95_latency_ratio", "confidence_drop"],
            "the control group served 99 requests, fewer than 100",
        ),
        (
            replace(HEALTHY, nonfinite_rate=0.5),
            None,
            ["nonfinite_rate"],
            ["p95_latency_ratio", "confidence_drop", "drift_psi", "label_accuracy_drop"],
            NO_CONTROL,
        ),
        # The world moved: both groups' outputs drifted from their references alike.
        (replace(HEALTHY, max_drift_psi=3.0), replace(HEALTHY, max_drift_psi=2.9), [], [], ""),
        # A first release's output drift, with nobody on a previous release to compare.
        (
            replace(HEALTHY, max_drift_psi=6.2),
            None,
            [],
            ["p95_latency_ratio", "confidence_drop", "drift_psi", "label_accuracy_drop"],
            "skipped: no control group data",
        ),
        (
            replace(HEALTHY, requests=50, nonfinite_rate=0.5),
            HEALTHY,
            [],
            [
                "error_rate",
                "nonfinite_rate",
                "p95_latency_ratio",
                "confidence_drop",
                "drift_psi",
                "label_accuracy_drop",
            ],
            "updated devices served 50 requests, fewer than 100",
        ),
        (
            None,
            HEALTHY,
            [],
            [
                "error_rate",
                "nonfinite_rate",
                "p95_latency_ratio",
                "confidence_drop",
                "drift_psi",
                "label_accuracy_drop",
            ],
            "updated devices served 0 requests",
        ),
        (
            replace(HEALTHY, confidence_mean=None, max_drift_psi=None),
            HEALTHY,
            [],
            ["confidence_drop", "drift_psi"],
            "",
        ),
    ],
    ids=[
        "healthy",
        "nonfinite_outputs",
        "errors",
        "ten_times_slower",
        "slower_within_limit",
        "less_confident",
        "drifted",
        "slow_but_no_control_group",
        "control_group_without_devices",
        "control_group_with_too_few_requests",
        "absolute_gates_need_no_control",
        "drift_shared_with_the_control_passes",
        "drift_without_a_control_is_skipped_with_a_note",
        "too_few_requests_on_new_release",
        "no_telemetry_at_all",
        "not_a_classifier",
    ],
)
def test_health_gates(
    new: FleetHealth | None,
    control: FleetHealth | None,
    failing: list[str],
    skipped: list[str],
    note: str,
) -> None:
    results = gates(ALL_COMMITTED, new=new, control=control)

    assert [name for name, result in results.items() if not result.passed] == failing
    assert [name for name, result in results.items() if result.value is None] == skipped
    assert all(results[name].note.startswith("skipped: ") for name in skipped)
    assert all(note in results[name].note for name in (skipped or failing))


def test_disabled_gate_always_passes_and_says_so() -> None:
    thresholds = GateThresholds(max_p95_latency_ratio=None, max_failure_rate=None)
    slow = replace(HEALTHY, p95_ms=1000.0)

    results = gates(WaveTally(failed=3), new=slow, thresholds=thresholds)

    assert results["p95_latency_ratio"].passed
    assert results["p95_latency_ratio"].note == "disabled"
    assert results["failure_rate"].passed
    assert results["failure_rate"].note == "disabled"
    assert (results["rollback_rate"].value, results["rollback_rate"].passed) == (0.0, True)


OTHER = ReleaseRef(model="classifier", version=3, sha256="c" * 64)
GROUPS_FLEET = (
    DeviceView("updated", True, NEW),
    DeviceView("assigned-not-yet-updated", True, OLD),
    DeviceView("still-old", True, OLD),
    DeviceView("still-old-offline", False, OLD),
    DeviceView("new-from-elsewhere", True, NEW),
    DeviceView("no-model", True, None),
    DeviceView("other-release", True, OTHER),
)


@pytest.mark.parametrize(
    ("last_good", "new", "control"),
    [
        (OLD, ["updated"], ["still-old", "still-old-offline"]),
        (None, ["updated"], []),
    ],
    ids=["previous_release_known", "first_release_of_the_model"],
)
def test_health_groups(last_good: ReleaseRef | None, new: list[str], control: list[str]) -> None:
    groups = health_groups(
        GROUPS_FLEET,
        assigned={"updated", "assigned-not-yet-updated"},
        release=NEW,
        last_good=last_good,
    )

    assert groups == (new, control)


def test_the_drift_gate_says_how_many_pooled_values_it_read() -> None:
    new = replace(HEALTHY, max_drift_psi=0.5, drift_values=2400, devices=600)
    control = replace(HEALTHY, max_drift_psi=0.1, drift_values=None)

    result = gates(ALL_COMMITTED, new=new, control=control)["drift_psi"]

    assert not result.passed
    assert "over 2400 values from 600 devices" in result.note
    assert "control 0.1 (worst window)" in result.note


@pytest.mark.parametrize(
    ("new_labels", "control_labels", "passed", "skipped"),
    [
        ((500, 0.70), (500, 0.90), False, False),  # truly worse: fails
        ((100, 0.86), (100, 0.90), True, False),  # within noise of 100 labels: ships
        ((5000, 0.83), (5000, 0.90), False, False),  # 0.07 on many labels is beyond 0.05
        ((20, 0.10), (500, 0.90), True, True),  # too few labels to say anything
    ],
    ids=["worse", "noise", "worse_on_many_labels", "too_few_labels"],
)
def test_the_label_accuracy_gate_is_right_both_ways(
    new_labels: tuple[int, float], control_labels: tuple[int, float], passed: bool, skipped: bool
) -> None:
    new = replace(HEALTHY, labeled=new_labels[0], label_accuracy=new_labels[1])
    control = replace(HEALTHY, labeled=control_labels[0], label_accuracy=control_labels[1])

    result = gates(ALL_COMMITTED, new=new, control=control)["label_accuracy_drop"]

    assert result.passed == passed, result
    assert (result.value is None) == skipped
    assert result.note.startswith("skipped: 20 labeled") == skipped


def test_sub_millisecond_latency_noise_passes_the_ratio_gate() -> None:
    # The agent's floor on the fleet's side: 0.97 ms against 0.2 ms is a 4.8x ratio a busy
    # CPU produced, and it is shown, but it does not fail the wave.
    control = replace(HEALTHY, p95_ms=0.2)
    noisy = replace(HEALTHY, p95_ms=0.97)

    result = gates(ALL_COMMITTED, new=noisy, control=control)["p95_latency_ratio"]

    assert result.passed
    assert result.value == pytest.approx(4.85)
    assert "less than 1 ms apart" in result.note
    slower = gates(ALL_COMMITTED, new=replace(HEALTHY, p95_ms=1.3), control=control)
    assert not slower["p95_latency_ratio"].passed
