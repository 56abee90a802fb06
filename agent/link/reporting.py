"""What the device tells the controller: lifecycle events and its retained state.

Everything goes through the link's outbox, so reports survive a broker outage and a
restart and leave in the order they were made. Event ``seq`` values come from a counter
persisted in the outbox, so they never repeat on this device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from protocol import Channel, Event, ReleaseRef, State, device_topic
from tensors import installed_runtimes

from .. import __version__
from ..clock import Clock
from ..update.machine import Journal
from .mqtt import Message
from .outbox import OutboxQueue

__all__ = ["LinkReporter", "offline_state"]

EVENT_SEQUENCE = "events"


def offline_state(device_id: str) -> State:
    """The will: what the broker says for a device whose connection died."""
    return State(device_id=device_id, online=False, agent_version=__version__)


class LinkReporter:
    """Turns updater callbacks into Event and State messages on the device's topics."""

    def __init__(
        self,
        *,
        device_id: str,
        prefix: str,
        outbox: OutboxQueue,
        publish: Callable[[Message], None],
        clock: Clock,
        snapshot: Callable[[], Mapping[str, Any]],
    ) -> None:
        self.device_id = device_id
        self.outbox = outbox
        self.publish = publish
        self.clock = clock
        # A callable that returns the State fields only the daemon knows: the busiest
        # phase, every model's releases, the trust root version.
        self.snapshot = snapshot
        self.events_topic = device_topic(prefix, device_id, Channel.EVENTS)
        self.state_topic = device_topic(prefix, device_id, Channel.STATE)

    def reserve_event_seq(self) -> int:
        return self.outbox.next_sequence(EVENT_SEQUENCE)

    def event(
        self,
        event_type: str,
        *,
        journal: Journal | None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        seq: int | None = None,
        model: str | None = None,
    ) -> None:
        release: ReleaseRef | None = journal.release if journal else None
        if model is None and release is not None:
            model = release.model
        event = Event(
            device_id=self.device_id,
            seq=seq if seq is not None else self.reserve_event_seq(),
            type=event_type,
            at=self.clock.now(),
            deployment_sequence=journal.deployment_sequence if journal else None,
            model=model,
            phase=str(journal.state) if journal else None,
            release=release,
            reason=reason,
            details=dict(details or {}),
        )
        self.publish(Message(self.events_topic, event.to_payload(), qos=1, retain=False))

    def state_changed(self) -> None:
        self.publish(Message(self.state_topic, self.online_state().to_payload(), retain=True))

    def online_state(self) -> State:
        return State(
            device_id=self.device_id,
            online=True,
            agent_version=__version__,
            runtimes=list(installed_runtimes()),
            reported_at=self.clock.now(),
            **self.snapshot(),
        )
