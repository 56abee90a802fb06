"""Value objects of an MQTT session: frozen dataclasses that validate themselves.

Invariants:
- a ``SessionSettings`` or ``Message`` that exists is usable: every check runs in
  ``__post_init__`` and raises ``SettingsError`` before any I/O;
- the password never appears in ``repr`` (nor, hence, in a log line or a traceback);
- the session flags on the wire follow from two fields: ``clean_session`` (3.1.1's clean
  session flag, MQTT 5's clean start flag) and ``session_expiry_s`` (MQTT 5 only).
"""

from __future__ import annotations

import enum
import math
import ssl
from dataclasses import dataclass, field

from .errors import SettingsError

__all__ = [
    "MAX_TOPIC_BYTES",
    "Message",
    "MqttVersion",
    "SessionSettings",
    "verify_topic_filter",
    "verify_topic_name",
]

MAX_TOPIC_BYTES = 65_535
MAX_SESSION_EXPIRY_S = 0xFFFF_FFFF  # MQTT 5 §3.1.2.11.2: a four-byte integer


class MqttVersion(enum.Enum):
    V311 = "3.1.1"
    V5 = "5"


@dataclass(frozen=True)
class SessionSettings:
    """Where and how to reach the broker, and how long to wait for it.

    ``connect_timeout_s`` bounds the TCP (and TLS) connect, then, separately, the CONNACK
    and a clean DISCONNECT; ``ack_timeout_s`` bounds each SUBACK and PUBACK. The backoff
    bounds are those of ``protocol.backoff_delay_s``. With ``clean_session=False`` (the
    default) the broker keeps the session of ``client_id`` across connections: under
    MQTT 5 for ``session_expiry_s`` after a disconnect.
    """

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 30
    tls_context: ssl.SSLContext | None = field(default=None, compare=False)
    connect_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    version: MqttVersion = MqttVersion.V311
    clean_session: bool = False
    session_expiry_s: int | None = None

    def __post_init__(self) -> None:
        if not self.host or any(char.isspace() for char in self.host):
            raise SettingsError(f"broker host {self.host!r} is empty or has spaces")
        if not 1 <= self.port <= 65_535:
            raise SettingsError(f"broker port {self.port} is not in 1-65535")
        # A persistent session is keyed by the client id: it must be ours and stable.
        if not self.client_id or not 1 <= len(self.client_id.encode()) <= 65_535:
            raise SettingsError("client_id must be 1-65535 bytes of UTF-8")
        if "\x00" in self.client_id:
            raise SettingsError("client_id must not contain NUL")
        if self.password is not None and self.username is None:
            # MQTT 3.1.1 allows no password alone, and aiomqtt sends none without a username.
            raise SettingsError("a password is allowed only with a username")
        if not 1 <= self.keepalive_s <= 65_535:
            raise SettingsError(f"keepalive_s {self.keepalive_s} is not in 1-65535")
        for name in ("connect_timeout_s", "ack_timeout_s", "backoff_initial_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise SettingsError(f"{name} must be a positive number, not {value}")
        if not (math.isfinite(self.backoff_max_s) and self.backoff_max_s >= self.backoff_initial_s):
            raise SettingsError("backoff_max_s must be finite and >= backoff_initial_s")
        if not isinstance(self.version, MqttVersion):
            raise SettingsError(f"version {self.version!r} is not an MqttVersion")
        if self.session_expiry_s is not None:
            if self.version is not MqttVersion.V5:
                raise SettingsError("session_expiry_s needs MQTT 5; 3.1.1 has no session expiry")
            if not 0 <= self.session_expiry_s <= MAX_SESSION_EXPIRY_S:
                raise SettingsError(f"session_expiry_s {self.session_expiry_s} is out of range")


@dataclass(frozen=True)
class Message:
    """One message to publish (or to register as the will)."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False

    def __post_init__(self) -> None:
        verify_topic_name(self.topic)
        if not isinstance(self.payload, bytes):
            raise SettingsError(f"payload for {self.topic} must be bytes")
        if self.qos not in (0, 1, 2):
            raise SettingsError(f"qos {self.qos} for {self.topic} is not 0, 1 or 2")


def verify_topic_name(topic: str) -> None:
    """Raise ``SettingsError`` unless ``topic`` may be published to."""
    if not topic or len(topic.encode()) > MAX_TOPIC_BYTES:
        raise SettingsError(f"topic {topic!r} must be 1-{MAX_TOPIC_BYTES} bytes of UTF-8")
    if any(char in topic for char in "+#\x00"):
        raise SettingsError(f"topic {topic!r} must not contain '+', '#' or NUL")


def verify_topic_filter(topic_filter: str) -> None:
    """Raise ``SettingsError`` unless ``topic_filter`` may be subscribed to."""
    if not topic_filter or len(topic_filter.encode()) > MAX_TOPIC_BYTES:
        raise SettingsError(f"topic filter {topic_filter!r} is empty or too long")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        misplaced_hash = "#" in level and (level != "#" or index != len(levels) - 1)
        if misplaced_hash or ("+" in level and level != "+") or "\x00" in level:
            raise SettingsError(f"topic filter {topic_filter!r} is not a valid filter")
