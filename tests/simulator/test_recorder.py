"""The recorder keeps what each agent decided: final outcomes per release (the last one
wins), events per device, phase events only counted, telemetry aggregated in buckets."""

from __future__ import annotations

import pytest

from agent.link.mqtt import Message
from simulator.recorder import Recorder
from tests.simulator.conftest import RecorderClock, publish_event, publish_telemetry


def test_outcome_counts_use_each_devices_last_final_event(recorder: Recorder) -> None:
    publish_event(recorder, "dev-1", "committed", version=2)
    publish_event(recorder, "dev-2", "committed", version=2)
    publish_event(recorder, "dev-2", "rolled_back", version=2, reason="error_rate")
    publish_event(recorder, "dev-3", "failed", version=2, reason="hash mismatch")
    publish_event(recorder, "dev-3", "committed", version=2)  # retried after a reboot
    publish_event(recorder, "dev-4", "committed", version=2)
    publish_event(recorder, "dev-4", "download_started", version=2)  # not a final event

    assert recorder.outcome_counts("digits:2") == {"committed": 3, "rolled_back": 1}
    assert recorder.final_events("digits:2")["dev-2"].reason == "error_rate"


def test_outcome_counts_are_per_release(recorder: Recorder) -> None:
    publish_event(recorder, "dev-1", "committed", version=2)
    publish_event(recorder, "dev-1", "rolled_back", version=3)

    assert recorder.outcome_counts("digits:2") == {"committed": 1}
    assert recorder.outcome_counts("digits:3") == {"rolled_back": 1}
    assert recorder.outcome_counts("digits:4") == {}


def test_events_keep_time_type_release_and_reason(
    recorder: Recorder, recorder_clock: RecorderClock
) -> None:
    recorder_clock.now_s = 12.5
    publish_event(recorder, "dev-1", "rolled_back", version=2, reason="nonfinite_rate")
    publish_event(recorder, "dev-1", "offline")

    [rolled_back, offline] = recorder.events["dev-1"]
    assert (rolled_back.t_s, rolled_back.type, rolled_back.release, rolled_back.reason) == (
        12.5,
        "rolled_back",
        "digits:2",
        "nonfinite_rate",
    )
    assert offline.release is None


def test_phase_events_are_only_counted(recorder: Recorder) -> None:
    for _ in range(3):
        publish_event(recorder, "dev-1", "phase", version=2)

    assert recorder.phase_events == 3
    assert recorder.events == {}


@pytest.mark.parametrize(
    "payload", [b"not json", b"{}", b'{"device_id": "dev-1", "seq": 0}'], ids=str
)
def test_undecodable_payloads_are_counted(recorder: Recorder, payload: bytes) -> None:
    recorder.on_publish("dev-1", Message("edgefleet/v1/dev-1/events", payload))
    recorder.on_publish("dev-1", Message("edgefleet/v1/dev-1/telemetry", payload))

    assert recorder.undecodable == 2
    assert recorder.events == {}


def test_other_channels_are_ignored(recorder: Recorder) -> None:
    recorder.on_publish("dev-1", Message("edgefleet/v1/dev-1/state", b"anything", retain=True))

    assert (recorder.undecodable, recorder.events, recorder.telemetry_series()) == (0, {}, [])


def test_telemetry_is_aggregated_per_bucket_and_release(
    recorder: Recorder, recorder_clock: RecorderClock
) -> None:
    recorder_clock.now_s = 1.0
    publish_telemetry(recorder, "dev-1", version=2, requests=10, p95_ms=10.0, confidence=0.9)
    recorder_clock.now_s = 4.0
    publish_telemetry(recorder, "dev-2", version=2, requests=30, p95_ms=30.0, confidence=0.5)
    publish_telemetry(recorder, "dev-3", version=3, requests=5, p95_ms=50.0, errors=1)
    recorder_clock.now_s = 7.0
    publish_telemetry(recorder, "dev-1", version=2, requests=0, p95_ms=1.0)

    assert recorder.telemetry_series() == [
        {
            "t_s": 0.0,
            "release": "digits:2",
            "requests": 40,
            "p95_ms": pytest.approx(25.0),  # request-weighted: (10*10 + 30*30) / 40
            "confidence": pytest.approx(0.6),
            "nonfinite": 0,
            "errors": 0,
        },
        {
            "t_s": 0.0,
            "release": "digits:3",
            "requests": 5,
            "p95_ms": pytest.approx(50.0),
            "confidence": None,
            "nonfinite": 0,
            "errors": 1,
        },
        # The bucket at 5 s saw no request and is left out.
    ]
