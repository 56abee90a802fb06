"""The test device's topics, its State birth and will, and numbered event messages."""

from __future__ import annotations

from agent.link.mqtt import Message
from protocol import Channel, State, device_topic

DEVICE = "cam-berlin-0001"


class DeviceTopics:
    def __init__(self, prefix: str) -> None:
        self.state = device_topic(prefix, DEVICE, Channel.STATE)
        self.events = device_topic(prefix, DEVICE, Channel.EVENTS)
        self.desired = device_topic(prefix, DEVICE, Channel.DESIRED)
        self.cmd = device_topic(prefix, DEVICE, Channel.CMD)
        self.birth = Message(
            self.state, State(device_id=DEVICE, online=True).to_payload(), retain=True
        )
        self.will = Message(
            self.state, State(device_id=DEVICE, online=False).to_payload(), retain=True
        )

    def event(self, number: int) -> Message:
        return Message(self.events, f"event-{number}".encode())
