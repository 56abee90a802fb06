"""Helpers for the simulator's recorder and report: real protocol payloads, published
the way an agent's ``on_publish`` hook hands them over, on a clock the test sets."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from agent.link.mqtt import Message
from protocol import Event, LatencySummary, ReleaseRef, TelemetryBatch, TelemetryWindow
from protocol.topics import DEFAULT_PREFIX, Channel, device_topic
from simulator.recorder import Recorder

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
_SEQ = itertools.count(1)


def ref(version: int) -> ReleaseRef:
    return ReleaseRef(model="digits", version=version, sha256=f"{version:02x}" * 32)


class RecorderClock:
    """The recorder's ``now_s``, set by the test."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def recorder_clock() -> RecorderClock:
    return RecorderClock()


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, recorder_clock: RecorderClock) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(recorder, "now_s", recorder_clock)
    return recorder


def publish_event(
    recorder: Recorder,
    device_id: str,
    type_: str,
    *,
    version: int | None = None,
    reason: str | None = None,
) -> None:
    event = Event(
        device_id=device_id,
        seq=next(_SEQ),
        type=type_,
        at=AT,
        release=None if version is None else ref(version),
        reason=reason,
    )
    topic = device_topic(DEFAULT_PREFIX, device_id, Channel.EVENTS)
    recorder.on_publish(device_id, Message(topic, event.to_payload()))


def publish_telemetry(
    recorder: Recorder,
    device_id: str,
    *,
    version: int,
    requests: int,
    p95_ms: float,
    confidence: float | None = None,
    errors: int = 0,
) -> None:
    window = TelemetryWindow(
        model="digits",
        release=ref(version),
        window_start=AT,
        window_s=2.0,
        requests=requests,
        errors=errors,
        nonfinite_outputs=0,
        latency=LatencySummary(p50_ms=p95_ms / 2, p95_ms=p95_ms, p99_ms=p95_ms * 2),
        top1_confidence_mean=confidence,
    )
    batch = TelemetryBatch(device_id=device_id, seq=next(_SEQ), windows=[window])
    topic = device_topic(DEFAULT_PREFIX, device_id, Channel.TELEMETRY)
    recorder.on_publish(device_id, Message(topic, batch.to_payload()))
