"""NATS users and permissions for the fleet: each device confined to its own subjects.

``write_nats_authorization`` writes an ``authorization { users = [...] }`` block from the
database, for the NATS servers' configuration to ``include`` (every node of a cluster
includes the same file; reload with SIGHUP). The rules are those of ``broker_auth`` for
Mosquitto, written against the subjects NATS makes of the topics (``/`` becomes ``.``,
a ``.`` inside a level ``//``):

- a device logs in over MQTT only, with its id as username and its MQTT password (kept
  as bcrypt since enrollment: ``devices.nats_password_hash``);
- it may publish ``{p}.{device}.state``, ``.events`` and ``.telemetry`` and subscribe to
  ``{p}.{device}.desired`` and ``.cmd``; and to ``$MQTT.sub.>``, the subjects NATS
  delivers a QoS 1 subscription on (each session its own random one; NATS refuses an
  MQTT client's subscription to a ``$MQTT`` topic, which ``tests/fleet_e2e`` checks);
- the controller's user (``mqtt_username``, required) may do anything, over NATS (the
  JetStream consumer) and MQTT (desired state), through an explicit ``>`` permission:
  with none, NATS before 2.12.3 crashes on every reload while a retained message the
  controller published exists (nats-server PR 7596; here, 2.9.10, seen crashing all three
  nodes at the reload after an enrollment).

A device enrolled before the bcrypt hash was kept has none: it is left out and counted,
and must enroll again to reach a NATS broker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from durable import PRIVATE_FILE_MODE, write_atomic

from ..db import make_engine
from ..errors import ConfigError
from ..settings import Settings
from .broker_auth import (
    DEVICE_PUBLISHES,
    DEVICE_SUBSCRIBES,
    controller_mqtt_credentials,
    enrolled_password_hashes,
)
from .credentials import hash_nats_password

__all__ = ["NatsExport", "device_subject", "nats_authorization", "write_nats_authorization"]

# Where NATS delivers a QoS 1 MQTT subscription (one random subject per session).
MQTT_DELIVERY_SUBJECTS = "$MQTT.sub.>"


@dataclass(frozen=True)
class NatsExport:
    devices: int
    without_hash: list[str]  # enrolled before bcrypt hashes were kept: left out
    controller_user: str


def device_subject(prefix: str, device_id: str, channel: str) -> str:
    """The subject NATS makes of ``{prefix}/{device_id}/{channel}``."""
    levels = [*prefix.split("/"), device_id, channel]
    return ".".join(level.replace(".", "//") for level in levels)


def nats_authorization(
    prefix: str, devices: list[tuple[str, str]], controller: tuple[str, str]
) -> str:
    """The ``authorization`` block: ``devices`` as (id, bcrypt hash), ``controller`` as
    (user, bcrypt hash). Strings are written as JSON strings, which NATS parses."""
    user, password_hash = controller
    lines = [
        "# Written by `edgefleet devices nats-config`; regenerate it, do not edit it.",
        "# Include it in every NATS server's configuration; reload with SIGHUP.",
        "authorization {",
        "  users = [",
        f"    {{user: {json.dumps(user)}, password: {json.dumps(password_hash)},",
        '     allowed_connection_types: ["STANDARD", "MQTT"],',
        # Everything, said explicitly: NATS before 2.12.3 crashes on a reload when a
        # retained message's publisher has no permissions block (nats-server PR 7596).
        '     permissions: {publish: {allow: [">"]}, subscribe: {allow: [">"]}}}',
    ]
    for device_id, device_hash in devices:
        publish = [device_subject(prefix, device_id, c.value) for c in DEVICE_PUBLISHES]
        subscribe = [device_subject(prefix, device_id, c.value) for c in DEVICE_SUBSCRIBES]
        subscribe.append(MQTT_DELIVERY_SUBJECTS)
        lines += [
            f"    {{user: {json.dumps(device_id)}, password: {json.dumps(device_hash)},",
            '     allowed_connection_types: ["MQTT"],',
            f"     permissions: {{publish: {{allow: {json.dumps(publish)}}},",
            f"                   subscribe: {{allow: {json.dumps(subscribe)}}}}}}}",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def write_nats_authorization(settings: Settings, path: Path) -> NatsExport:
    """Write the block to ``path`` (mode 0600, atomically, keeping the file's owner) from
    the database; run on the controller host. Needs ``mqtt_username``/``mqtt_password``:
    the controller logs in to NATS with them."""
    if not (settings.mqtt_username and settings.mqtt_password):
        raise ConfigError(
            "set mqtt_username and mqtt_password: the controller logs in to NATS with them"
        )
    engine = make_engine(settings.resolved_database_url)
    try:
        rows = enrolled_password_hashes(engine, "nats_password_hash")
    finally:
        engine.dispose()
    devices = [(device_id, hashed) for device_id, hashed in rows if hashed]
    without_hash = [device_id for device_id, hashed in rows if not hashed]
    user, password = controller_mqtt_credentials(settings)
    text = nats_authorization(settings.topic_prefix, devices, (user, hash_nats_password(password)))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"), mode=PRIVATE_FILE_MODE, keep_owner=True)
    return NatsExport(devices=len(devices), without_hash=without_hash, controller_user=user)
