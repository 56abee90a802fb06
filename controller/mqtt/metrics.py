"""Prometheus metrics of the MQTT bridge, registered on the registry it is given.

Each bridge takes a registry of its own (the app's, or a fresh one), so two bridges in one
process, as in tests, never collide on metric names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from protocol import Channel

from .ingest import DropReason, WrittenReports

__all__ = ["BridgeMetrics"]

_REPORT_CHANNELS = (Channel.STATE, Channel.EVENTS, Channel.TELEMETRY)


class BridgeMetrics:
    """Counters the bridge updates per message; children are resolved once, up front."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        received = Counter(
            "edgefleet_bridge_messages_total",
            "Device reports the MQTT bridge accepted, by channel.",
            ["channel"],
            registry=registry,
        )
        dropped = Counter(
            "edgefleet_bridge_dropped_total",
            "Messages the MQTT bridge dropped, by reason.",
            ["reason"],
            registry=registry,
        )
        stored = Counter(
            "edgefleet_bridge_stored_total",
            "What the bridge's writes changed: states applied, events applied, duplicate "
            "events, reports of unknown devices, telemetry rows inserted.",
            ["kind"],
            registry=registry,
        )
        self.write_failures = Counter(
            "edgefleet_bridge_write_failures_total",
            "Batch writes that raised (each is retried).",
            registry=registry,
        )
        self.write_seconds = Histogram(
            "edgefleet_bridge_write_seconds",
            "Time to write one batch of reports.",
            registry=registry,
        )
        self.queued = Gauge(
            "edgefleet_bridge_queued_reports",
            "Reports received and not yet written.",
            registry=registry,
        )
        self.connected = Gauge(
            "edgefleet_bridge_connected",
            "1 while the bridge is connected and subscribed to the broker.",
            registry=registry,
        )
        self.held_acks = Counter(
            "edgefleet_bridge_held_acks_total",
            "Acknowledgements held back because the queue was full (back-pressure).",
            registry=registry,
        )
        self.connects = Counter(
            "edgefleet_bridge_connects_total",
            "Successful connections (and subscriptions) to the broker.",
            registry=registry,
        )
        self.received = {channel: received.labels(channel.value) for channel in _REPORT_CHANNELS}
        self.dropped = {reason: dropped.labels(reason.value) for reason in DropReason}
        self.refused = dropped.labels("refused_by_database")
        self._stored = {
            kind: stored.labels(kind)
            for kind in ("states", "events", "duplicate_events", "unknown_device", "telemetry")
        }

    def count_written(self, written: WrittenReports) -> None:
        self._stored["states"].inc(written.states)
        self._stored["events"].inc(written.events.applied)
        self._stored["duplicate_events"].inc(written.events.duplicates)
        self._stored["unknown_device"].inc(written.events.unknown)
        self._stored["telemetry"].inc(written.telemetry_rows)
