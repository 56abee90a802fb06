"""summary.json and report.html of a run, built from a recorder fed with real protocol
payloads and rollout details shaped like the controller's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from protocol import ModelState, ReleaseRef
from simulator.plan import DevicePlan, plan_fleet
from simulator.recorder import Recorder, RolloutTimeline
from simulator.report import write_report
from simulator.run import RunResult
from simulator.scenario import Scenario
from simulator.shared import Shortcuts
from tests.simulator.conftest import RecorderClock, publish_event, publish_telemetry, ref

HOSTILE = "<script>alert('x')</script>"


@dataclass
class StubModels:
    serving: ReleaseRef | None

    def model_states(self) -> list[ModelState]:
        if self.serving is None:
            return []
        return [ModelState(model=self.serving.model, active=self.serving)]


@dataclass
class StubDaemon:
    serving: ReleaseRef | None
    models: StubModels = field(init=False)

    def __post_init__(self) -> None:
        self.models = StubModels(self.serving)


@dataclass
class StubDevice:
    """What the report reads of a ``SimulatedDevice``."""

    plan: DevicePlan
    daemon: StubDaemon | None
    kills: int = 0
    requests: int = 100

    @property
    def device_id(self) -> str:
        return self.plan.device_id


def detail(status: str, wave: int, *outcomes: dict[str, int], **final: Any) -> dict[str, Any]:
    """A rollout detail as the controller describes it: waves "1" and "100%" of 3."""
    sizes, targets = ["1", "100%"], [1, 3]
    return {
        "status": status,
        "wave": wave,
        "waves": [
            {"wave": i, "size": sizes[i], "target": targets[i], "outcomes": outcomes[i]}
            for i in range(len(outcomes))
        ],
        **final,
    }


def scenario(name: str = "report-test") -> Scenario:
    return Scenario.model_validate(
        {
            "name": name,
            "fleet": {"devices": 3},
            "rollouts": [{"release": "digits:2"}, {"release": "digits:3"}],
        }
    )


def good_rollout() -> RolloutTimeline:
    timeline = RolloutTimeline(0, "r-0001", "digits:2", started_s=1.0)
    timeline.add(2.0, detail("running", 0, {}, {}))
    timeline.add(5.0, detail("running", 1, {"committed": 1}, {}))
    timeline.add(8.0, detail("completed", 1, {"committed": 1}, {"committed": 2}))
    timeline.final = detail(
        "completed",
        1,
        {"committed": 1},
        {"committed": 2},
        gates=[
            {"name": "error_rate", "value": 0.0, "threshold": 0.05, "passed": True, "note": None},
            {"name": "p95_ms", "value": 3.1, "threshold": 50, "passed": True, "note": HOSTILE},
        ],
        judgements=[{"wave": 0, "at_s": 3.0, "passed": True, "overridden": False, "gates": []}],
        notes=[f"operator wrote {HOSTILE}"],
    )
    return timeline


def aborted_rollout() -> RolloutTimeline:
    timeline = RolloutTimeline(1, "r-0002", "digits:3", started_s=30.0)
    timeline.add(31.0, detail("running", 0, {}, {}))
    timeline.add(40.0, detail("aborted", 0, {"rolled_back": 1}, {}))
    timeline.final = detail(
        "aborted",
        0,
        {"rolled_back": 1},
        {},
        gates=[],
        judgements=[{"wave": 0, "at_s": 39.0, "passed": False, "overridden": False, "gates": []}],
        notes=[],
    )
    return timeline


def feed(recorder: Recorder, clock: RecorderClock, ids: list[str]) -> None:
    """Rollout 1 commits on all three, then one rolls back; rollout 2's canary rolls back."""
    clock.now_s = 5.0
    for device_id in ids:
        publish_telemetry(recorder, device_id, version=1, requests=20, p95_ms=4.0, confidence=0.9)
    clock.now_s = 10.0
    for device_id in ids:
        publish_event(recorder, device_id, "phase", version=2)
        publish_event(recorder, device_id, "committed", version=2)
    clock.now_s = 15.0
    for device_id in ids:
        publish_telemetry(recorder, device_id, version=2, requests=20, p95_ms=3.0, confidence=0.8)
    clock.now_s = 20.0
    publish_event(recorder, ids[2], "rolled_back", version=2, reason=HOSTILE)
    clock.now_s = 35.0
    publish_telemetry(recorder, ids[0], version=3, requests=20, p95_ms=90.0, confidence=0.3)
    clock.now_s = 40.0
    publish_event(recorder, ids[0], "rolled_back", version=3, reason="error_rate")
    clock.now_s = 50.0


def make_result(
    recorder: Recorder,
    clock: RecorderClock,
    *,
    name: str = "report-test",
    failures: list[str] | None = None,
) -> RunResult:
    spec = scenario(name)
    plan = plan_fleet(spec, seed=7, run_tag="rep")
    ids = [d.device_id for d in plan.devices]
    feed(recorder, clock, ids)
    recorder.rollouts += [good_rollout(), aborted_rollout()]
    serving = [ref(2), ref(2), None]  # the third rolled back to nothing
    devices = [StubDevice(d, StubDaemon(s)) for d, s in zip(plan.devices, serving, strict=True)]
    return RunResult(
        plan,
        spec,
        recorder,
        cast(Any, devices),
        Shortcuts(),
        setup_s=3.21,
        counters={"kills": 0, "broker_cuts": 2},
        expectation_failures=failures or [],
    )


@pytest.fixture
def summary(recorder: Recorder, recorder_clock: RecorderClock, tmp_path: Path) -> dict[str, Any]:
    return write_report(make_result(recorder, recorder_clock), tmp_path)


def test_summary_json_is_what_write_report_returns(summary: dict[str, Any], tmp_path: Path) -> None:
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (summary["scenario"], summary["seed"], summary["run_tag"]) == ("report-test", 7, "rep")
    assert summary["devices_count"] == 3
    assert summary["counters"] == {"kills": 0, "broker_cuts": 2}
    assert summary["shortcuts"] == Shortcuts().names()


def test_summary_counts_outcomes_per_rollout_from_the_events(summary: dict[str, Any]) -> None:
    assert [r["device_outcomes"] for r in summary["rollouts"]] == [
        {"committed": 2, "rolled_back": 1, "failed": 0},
        {"committed": 0, "rolled_back": 1, "failed": 0},
    ]
    assert [r["status"] for r in summary["rollouts"]] == ["completed", "aborted"]


def test_summary_times_each_wave_from_the_samples(summary: dict[str, Any]) -> None:
    good, aborted = summary["rollouts"]

    assert good["duration_s"] == 7.0
    assert [(w["wave"], w["started_s"], w["settled_s"]) for w in good["waves"]] == [
        (0, 1.0, 4.0),
        (1, 4.0, 7.0),
    ]
    assert good["waves"][1]["outcomes"] == {"committed": 2}
    assert (aborted["waves"][0]["started_s"], aborted["waves"][0]["settled_s"]) == (1.0, 10.0)
    assert aborted["waves"][1]["started_s"] is None


def test_wave_that_never_started_has_not_settled(summary: dict[str, Any]) -> None:
    never_started = summary["rollouts"][1]["waves"][1]

    assert (never_started["started_s"], never_started["settled_s"]) == (None, None)


def test_summary_keeps_gates_judgements_and_notes(summary: dict[str, Any]) -> None:
    good = summary["rollouts"][0]

    assert [g["name"] for g in good["gates"]] == ["error_rate", "p95_ms"]
    assert good["judgements"][0]["passed"] is True
    assert good["notes"] == [f"operator wrote {HOSTILE}"]


def test_summary_counts_final_releases(summary: dict[str, Any]) -> None:
    assert summary["final_releases"] == {"digits:2": 2, "none": 1}


def test_summary_lists_each_devices_events_without_phase_events(
    summary: dict[str, Any],
) -> None:
    events = [[e["type"] for e in d["events"]] for d in summary["devices"]]

    assert events == [["committed", "rolled_back"], ["committed"], ["committed", "rolled_back"]]
    assert summary["devices"][2]["events"][1]["reason"] == HOSTILE


@pytest.mark.parametrize(
    ("failures", "met"), [([], True), (["rollout 0: 1 devices rolled_back, expected 0"], False)]
)
def test_summary_says_whether_expectations_were_met(
    recorder: Recorder,
    recorder_clock: RecorderClock,
    tmp_path: Path,
    failures: list[str],
    met: bool,
) -> None:
    summary = write_report(make_result(recorder, recorder_clock, failures=failures), tmp_path)

    assert summary["expectations_met"] is met
    assert summary["expectation_failures"] == failures
    html = (tmp_path / "report.html").read_text()
    assert ("NOT met" in html) is not met


def test_report_has_an_svg_per_plot(summary: dict[str, Any], tmp_path: Path) -> None:
    html = (tmp_path / "report.html").read_text()

    # Progress of each rollout, p95 latency, confidence, rollbacks.
    assert html.count("<svg") == html.count("</svg>") == 5
    for title in (
        "Rollout 1 (digits:2): devices settled per wave",
        "Rollout 2 (digits:3): devices settled per wave",
        "p95 latency (ms), request-weighted",
        "top-1 confidence, mean",
        "Devices rolled back (cumulative)",
    ):
        assert f"aria-label='{title}'" in html


def test_report_escapes_hostile_strings(
    recorder: Recorder, recorder_clock: RecorderClock, tmp_path: Path
) -> None:
    result = make_result(
        recorder, recorder_clock, name=HOSTILE, failures=[f"rollout 0: status {HOSTILE}"]
    )

    write_report(result, tmp_path)

    html = (tmp_path / "report.html").read_text()
    assert "<script" not in html
    # The title, the heading, the failures, the gate note and the rollout notes.
    assert html.count("&lt;script&gt;") >= 5


def test_report_is_self_contained(summary: dict[str, Any], tmp_path: Path) -> None:
    html = (tmp_path / "report.html").read_text()

    assert "<script" not in html
    assert "src=" not in html
    assert "http" not in html


def test_rollout_without_samples_reports_no_data(recorder: Recorder, tmp_path: Path) -> None:
    spec = scenario()
    recorder.rollouts.append(RolloutTimeline(0, "r-0001", "digits:2", started_s=0.0))
    result = RunResult(plan_fleet(spec, seed=1, run_tag="t"), spec, recorder, [], Shortcuts())

    summary = write_report(result, tmp_path)

    assert summary["rollouts"][0]["duration_s"] is None
    assert summary["rollouts"][0]["waves"] == []
    assert summary["final_releases"] == {}
    html = (tmp_path / "report.html").read_text()
    assert "<svg" not in html
    assert "no data" in html
    assert "No device rolled back." in html
