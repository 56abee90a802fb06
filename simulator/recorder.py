"""What the simulation saw: every device's events and telemetry, and each rollout's progress.

Devices' messages are read where the agent queues them (``AgentDaemon``'s ``on_publish``
hook), so the record holds what each agent decided even when the broker or the controller
lost it. Telemetry is kept aggregated in ``BUCKET_S`` buckets per release, so memory does
not grow with the fleet; events are kept per device except the frequent ``phase`` ones,
which are only counted.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from agent.link.mqtt import Message
from protocol import Event, ProtocolError, TelemetryBatch

__all__ = ["DeviceEvent", "Recorder", "RolloutTimeline"]

BUCKET_S = 5.0
FINAL_EVENTS = ("committed", "failed", "rolled_back")


@dataclass(frozen=True)
class DeviceEvent:
    t_s: float  # seconds since the simulation started
    type: str
    release: str | None
    reason: str | None


@dataclass
class _Bucket:
    requests: int = 0
    p95_weighted_ms: float = 0.0
    confidence_weighted: float = 0.0
    confidence_requests: int = 0
    nonfinite: int = 0
    errors: int = 0


@dataclass
class RolloutTimeline:
    index: int
    rollout_id: str
    release: str
    started_s: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None

    def add(self, t_s: float, detail: dict[str, Any]) -> None:
        self.samples.append(
            {
                "t_s": round(t_s, 2),
                "status": detail["status"],
                "wave": detail["wave"],
                "waves": [
                    {"wave": wave["wave"], "target": wave["target"], **wave["outcomes"]}
                    for wave in detail["waves"]
                ],
            }
        )


class Recorder:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.events: dict[str, list[DeviceEvent]] = defaultdict(list)
        self.phase_events = 0
        self.telemetry: dict[tuple[float, str], _Bucket] = defaultdict(_Bucket)
        self.undecodable = 0
        self.rollouts: list[RolloutTimeline] = []

    def now_s(self) -> float:
        return time.monotonic() - self.started

    def on_publish(self, device_id: str, message: Message) -> None:
        channel = message.topic.rsplit("/", 1)[-1]
        try:
            if channel == "events":
                self._event(device_id, Event.from_payload(message.payload))
            elif channel == "telemetry":
                self._telemetry(TelemetryBatch.from_payload(message.payload))
        except ProtocolError:
            self.undecodable += 1

    def _event(self, device_id: str, event: Event) -> None:
        if event.type == "phase":
            self.phase_events += 1
            return
        release = f"{event.release.model}:{event.release.version}" if event.release else None
        self.events[device_id].append(DeviceEvent(self.now_s(), event.type, release, event.reason))

    def _telemetry(self, batch: TelemetryBatch) -> None:
        bucket_start = self.now_s() // BUCKET_S * BUCKET_S
        for window in batch.windows:
            release = f"{window.release.model}:{window.release.version}" if window.release else "?"
            bucket = self.telemetry[(bucket_start, release)]
            bucket.requests += window.requests
            bucket.errors += window.errors
            bucket.nonfinite += window.nonfinite_outputs
            if window.latency is not None:
                bucket.p95_weighted_ms += window.latency.p95_ms * window.requests
            if window.top1_confidence_mean is not None:
                bucket.confidence_weighted += window.top1_confidence_mean * window.requests
                bucket.confidence_requests += window.requests

    def final_events(self, release: str) -> dict[str, DeviceEvent]:
        """Each device's last final event for ``release``."""
        finals: dict[str, DeviceEvent] = {}
        for device_id, events in self.events.items():
            for event in events:
                if event.release == release and event.type in FINAL_EVENTS:
                    finals[device_id] = event
        return finals

    def outcome_counts(self, release: str) -> Counter[str]:
        return Counter(event.type for event in self.final_events(release).values())

    def telemetry_series(self) -> list[dict[str, Any]]:
        series = []
        for (start, release), bucket in sorted(self.telemetry.items()):
            if bucket.requests == 0:
                continue
            series.append(
                {
                    "t_s": start,
                    "release": release,
                    "requests": bucket.requests,
                    "p95_ms": bucket.p95_weighted_ms / bucket.requests,
                    "confidence": (
                        bucket.confidence_weighted / bucket.confidence_requests
                        if bucket.confidence_requests
                        else None
                    ),
                    "nonfinite": bucket.nonfinite,
                    "errors": bucket.errors,
                }
            )
        return series
