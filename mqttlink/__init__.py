"""The one MQTT adapter of edgefleet, over aiomqtt and paho, hiding both.

The agent's link and the controller's bridge are built on it; nothing else of ours
imports paho or aiomqtt (an import-linter contract checks it). It imports only
``protocol`` of ours.

- ``settings``: ``SessionSettings``, ``Message``, ``MqttVersion``, topic checks — frozen
  dataclasses that validate themselves;
- ``connection``: ``MqttConnection``, one connection: CONNACK classification,
  acknowledgement waits under ``asyncio.timeout``, clean disconnect and a cut that makes
  the broker send the will;
- ``ingest``: ``FastIngest``, the mode where messages go straight from paho to a
  synchronous callback and the caller releases each ``Ack``;
- ``reconnect``: ``Backoff`` and ``keep_connected``, the reconnect loop;
- ``addresses``: one or several broker nodes from URLs, and which to connect to next;
- ``errors``: the error tree, rooted at ``MqttLinkError``;
- ``_paho_compat``, ``_aiomqtt_compat``: every reach into a private attribute of paho
  or aiomqtt, each checked by ``tests/mqttlink/test_compat.py``.
"""

from .addresses import BrokerAddress, BrokerAddresses, parse_broker_urls
from .connection import MqttConnection, ReceivedMessage, wait_acknowledged
from .errors import (
    ConfigurationRefusedError,
    ConnectionFailedError,
    CredentialsRefusedError,
    LinkTimeoutError,
    MqttLinkError,
    RefusedError,
    SettingsError,
    TransportError,
)
from .ingest import Ack, FastIngest, IngestCallback
from .reconnect import Backoff, is_retryable, keep_connected
from .settings import (
    MAX_TOPIC_BYTES,
    Message,
    MqttVersion,
    SessionSettings,
    verify_topic_filter,
    verify_topic_name,
)

__all__ = [
    "MAX_TOPIC_BYTES",
    "Ack",
    "Backoff",
    "BrokerAddress",
    "BrokerAddresses",
    "ConfigurationRefusedError",
    "ConnectionFailedError",
    "CredentialsRefusedError",
    "FastIngest",
    "IngestCallback",
    "LinkTimeoutError",
    "Message",
    "MqttConnection",
    "MqttLinkError",
    "MqttVersion",
    "ReceivedMessage",
    "RefusedError",
    "SessionSettings",
    "SettingsError",
    "TransportError",
    "is_retryable",
    "keep_connected",
    "parse_broker_urls",
    "verify_topic_filter",
    "verify_topic_name",
    "wait_acknowledged",
]
