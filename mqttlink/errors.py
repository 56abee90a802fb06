"""The errors ``mqttlink`` raises. paho's and aiomqtt's exceptions never leave the package:
they are translated once, where the adapter calls them, with ``raise … from exc``::

    MqttLinkError                      root of every mqttlink error
    ├── SettingsError                  settings, a message or a topic that cannot be used;
    │                                  raised before any I/O
    ├── RefusedError                   the broker's CONNACK refused the connection for a
    │   │                              reason that retrying the same settings cannot fix
    │   ├── CredentialsRefusedError    bad user name or password, or not authorized
    │   │                              (3.1.1 codes 4, 5; MQTT 5 codes 134, 135)
    │   └── ConfigurationRefusedError  protocol version or client identifier refused
    │                                  (3.1.1 codes 1, 2; MQTT 5 codes 132, 133)
    └── TransportError                 retryable: the same call may succeed later
        ├── ConnectionFailedError      no connection, a connection lost, or any other
        │                              CONNACK refusal (server unavailable, busy, …)
        └── LinkTimeoutError           no connection or no acknowledgement (CONNACK,
                                       SUBACK, PUBACK, DISCONNECT) within its timeout

``retryable`` says which side of the tree an error is on, for the reconnect loop.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ConfigurationRefusedError",
    "ConnectionFailedError",
    "CredentialsRefusedError",
    "LinkTimeoutError",
    "MqttLinkError",
    "RefusedError",
    "SettingsError",
    "TransportError",
]


class MqttLinkError(Exception):
    """Root of every error mqttlink raises."""

    retryable: ClassVar[bool] = False


class SettingsError(MqttLinkError, ValueError):
    """Settings, a message or a topic that cannot be used; nothing was sent."""


class RefusedError(MqttLinkError):
    """The broker refused the connection in its CONNACK; ``code`` is its reason code."""

    def __init__(self, message: str, *, code: int | None) -> None:
        super().__init__(message)
        self.code = code


class CredentialsRefusedError(RefusedError):
    """The broker refused the user name and password: an operator must act. Retrying the
    same credentials cannot help and looks like an attack to the broker."""


class ConfigurationRefusedError(RefusedError):
    """The broker refused the protocol version or the client identifier."""


class TransportError(MqttLinkError):
    """The network failed; the same call may succeed on a later connection."""

    retryable = True


class ConnectionFailedError(TransportError):
    """No connection, or the connection was lost."""


class LinkTimeoutError(TransportError):
    """A connect or an acknowledgement took longer than its timeout."""
