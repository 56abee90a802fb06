"""MQTT topic names: ``{prefix}/{device_id}/{channel}``.

Invariants: a device id or prefix never contains an MQTT wildcard (``+``, ``#``), a NUL,
or a leading ``$``, so a topic built here never matches more than one device and never
lands in the broker's ``$SYS`` space; parsing is the exact inverse of building.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from .errors import TopicError

__all__ = [
    "CHANNELS",
    "DEFAULT_PREFIX",
    "DEVICE_ID_PATTERN",
    "Channel",
    "ChannelSpec",
    "device_topic",
    "parse_device_topic",
    "subscription_filter",
    "verify_device_id",
    "verify_prefix",
]

DEFAULT_PREFIX = "edgefleet/v1"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
_PREFIX_LEVEL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Channel(StrEnum):
    DESIRED = "desired"
    STATE = "state"
    EVENTS = "events"
    TELEMETRY = "telemetry"
    CMD = "cmd"


@dataclass(frozen=True)
class ChannelSpec:
    qos: int
    retained: bool
    from_device: bool


CHANNELS: dict[Channel, ChannelSpec] = {
    Channel.DESIRED: ChannelSpec(qos=1, retained=True, from_device=False),
    Channel.STATE: ChannelSpec(qos=1, retained=True, from_device=True),
    Channel.EVENTS: ChannelSpec(qos=1, retained=False, from_device=True),
    Channel.TELEMETRY: ChannelSpec(qos=1, retained=False, from_device=True),
    Channel.CMD: ChannelSpec(qos=1, retained=False, from_device=False),
}


def verify_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is a valid device id, else raise ``TopicError``."""
    if not _DEVICE_ID.fullmatch(device_id):
        raise TopicError(
            f"device id {device_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ - "
            "and start with a letter or digit"
        )
    return device_id


def verify_prefix(prefix: str) -> str:
    """Return ``prefix`` if every level of it is plain text, else raise ``TopicError``."""
    levels = prefix.split("/")
    if not 1 <= len(levels) <= 8 or not all(_PREFIX_LEVEL.fullmatch(level) for level in levels):
        raise TopicError(
            f"topic prefix {prefix!r} must be 1-8 '/'-separated levels of A-Z a-z 0-9 . _ -"
        )
    return prefix


def device_topic(prefix: str, device_id: str, channel: Channel) -> str:
    return f"{verify_prefix(prefix)}/{verify_device_id(device_id)}/{Channel(channel).value}"


def parse_device_topic(prefix: str, topic: str) -> tuple[str, Channel]:
    """Split a device topic under ``prefix`` into its device id and channel."""
    head = verify_prefix(prefix) + "/"
    if not topic.startswith(head):
        raise TopicError(f"topic {topic!r} is not under prefix {prefix!r}")
    rest = topic[len(head) :].split("/")
    if len(rest) != 2:
        raise TopicError(f"topic {topic!r} is not {prefix}/<device>/<channel>")
    device_id, channel_name = rest
    try:
        channel = Channel(channel_name)
    except ValueError as exc:
        raise TopicError(f"unknown channel {channel_name!r} in topic {topic!r}") from exc
    return verify_device_id(device_id), channel


def subscription_filter(prefix: str, channel: Channel, *, shared_group: str | None = None) -> str:
    """The filter matching ``channel`` of every device; an MQTT v5 shared one with a group."""
    topic_filter = f"{verify_prefix(prefix)}/+/{Channel(channel).value}"
    if shared_group is None:
        return topic_filter
    if not _PREFIX_LEVEL.fullmatch(shared_group):
        raise TopicError(f"shared subscription group {shared_group!r} is not a plain name")
    return f"$share/{shared_group}/{topic_filter}"
