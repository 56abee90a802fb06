"""Broker credentials and ACLs: per-device MQTT logins confined to the device's own topics.

Two brokers, one rule set (ARCHITECTURE.md §3, §4). A device logs in with its id as
username and may only

- subscribe to and receive ``{prefix}/{device}/desired`` and ``{prefix}/{device}/cmd``;
- publish ``{prefix}/{device}/state``, ``…/events`` and ``…/telemetry``.

The controller's own user may do anything under ``{prefix}/#``.

- **Embedded amqtt broker**: ``embedded_broker_config(settings, engine)`` returns the
  ``amqtt.broker.Broker`` config. ``DeviceAuthPlugin`` checks logins against the
  ``devices`` table at every connect (decommissioned devices are refused) and
  ``DeviceTopicPlugin`` applies the rules above. With ``settings.tls`` devices connect to
  a TLS listener; one presenting a client certificate the CA issued is the device the
  certificate names, if its ``device_certificates`` row is not revoked (the TLS handshake
  already refused other CAs and expired certificates); a device with no certificate may
  log in with its password only if ``device_password_login`` is on, and never over the
  plain listener, which then listens on loopback for the controller alone. amqtt
  publishes a client's will without any topic check, and re-sends retained messages of
  a persistent session without a receive check, so the auth plugin also refuses a device
  whose will topic is not its own ``state`` topic or whose client id is not its device id.
- **Mosquitto**: ``write_mosquitto_files`` exports a password file (the ``$7$`` hashes as
  stored) and an ACL file of ``pattern`` lines with ``%u``; with a CA in the data
  directory also a TLS configuration and a CRL (``mosquitto_tls``), whose certificate
  listener takes the certificate's common name, the device id, as ``%u``.

The controller's MQTT login is ``settings.mqtt_username``/``mqtt_password`` when set.
Without them the embedded broker accepts the user ``edgefleet-controller`` with a random
secret made once per process: ``controller_mqtt_credentials(settings)`` gives both to the
controller's own client, and nothing outside the process can know the secret. No device
may be called like that (``enrollment.RESERVED_DEVICE_ID_PREFIX``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from durable import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, write_atomic
from protocol import Channel, ProtocolError, device_topic

from ..ca import CA_CERT_FILE, server_certificate_files
from ..db import make_engine
from ..errors import ConfigError
from ..settings import DEFAULT_CONTROLLER_MQTT_USERNAME, Settings
from .credentials import hash_mqtt_password, verify_mqtt_password
from .mosquitto_tls import (
    MosquittoTlsExport,
    has_certificate_authority,
    write_mosquitto_tls_files,
)
from .tables import DeviceCertificate, DeviceRecord

__all__ = [
    "DEFAULT_CONTROLLER_MQTT_USERNAME",
    "DEVICE_PUBLISHES",
    "DEVICE_SUBSCRIBES",
    "DeviceAuthPlugin",
    "DeviceTopicPlugin",
    "MosquittoExport",
    "controller_mqtt_credentials",
    "decommissioned_among",
    "device_may",
    "embedded_broker_config",
    "enrolled_password_hashes",
    "mosquitto_acl",
    "write_mosquitto_files",
]

logger = logging.getLogger(__name__)

DEVICE_SUBSCRIBES: tuple[Channel, ...] = (Channel.DESIRED, Channel.CMD)
DEVICE_PUBLISHES: tuple[Channel, ...] = (Channel.STATE, Channel.EVENTS, Channel.TELEMETRY)
_PLUGIN_MODULE = __name__
# Client ids go to the database in chunks of this many bound parameters.
_IN_CHUNK = 900

_process_secret_lock = threading.Lock()
_process_secret: str | None = None


def controller_mqtt_credentials(settings: Settings) -> tuple[str, str]:
    """(username, password) the controller's own MQTT client logs in with.

    The configured ones when ``settings.mqtt_username`` is set; else the user
    ``edgefleet-controller`` with a secret made once per process, which only the embedded
    broker of this same process accepts.
    """
    if settings.mqtt_username:
        if not settings.mqtt_password:
            raise ConfigError("mqtt_username is set but mqtt_password is empty")
        return settings.mqtt_username, settings.mqtt_password
    global _process_secret
    with _process_secret_lock:
        if _process_secret is None:
            _process_secret = secrets.token_urlsafe(32)
        return DEFAULT_CONTROLLER_MQTT_USERNAME, _process_secret


def device_may(prefix: str, device_id: str, topic: str, action: Action) -> bool:
    """Whether device ``device_id`` may do ``action`` on ``topic`` (a filter for SUBSCRIBE).

    Only exact topics match: a wildcard filter is refused even inside the device's own
    topics, so no filter can reach another device's topic or a channel it must not read.
    """
    if action in (Action.SUBSCRIBE, Action.RECEIVE):
        allowed = DEVICE_SUBSCRIBES
    elif action == Action.PUBLISH:
        allowed = DEVICE_PUBLISHES
    else:
        return False
    try:
        return topic in {device_topic(prefix, device_id, channel) for channel in allowed}
    except ProtocolError:  # not a valid device id or prefix
        return False


def _password_text(password: Any) -> str | None:
    if isinstance(password, bytes | bytearray):
        try:
            return bytes(password).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return password if isinstance(password, str) else None


def _certificate_holder(engine: Engine, sha256: str) -> str | None:
    """The enrolled device whose live certificate has this SHA-256, or None."""
    with Session(engine) as session:
        return session.exec(
            select(DeviceCertificate.device_id)
            .join(DeviceRecord, col(DeviceRecord.id) == col(DeviceCertificate.device_id))
            .where(
                col(DeviceCertificate.sha256) == sha256,
                col(DeviceCertificate.revoked_at).is_(None),
                col(DeviceRecord.decommissioned_at).is_(None),
            )
        ).first()


def _peer_certificate(session: Any) -> bytes | None:
    """The DER of the client certificate the TLS handshake verified, if any."""
    ssl_object = getattr(session, "ssl_object", None)
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der if isinstance(der, bytes) else None


def _device_password_hash(engine: Engine, device_id: str) -> str | None:
    with Session(engine) as session:
        return session.exec(
            select(DeviceRecord.mqtt_password_hash).where(
                col(DeviceRecord.id) == device_id,
                col(DeviceRecord.decommissioned_at).is_(None),
            )
        ).first()


def decommissioned_among(engine: Engine, client_ids: Collection[str]) -> set[str]:
    """Those of ``client_ids`` that are devices decommissioned since they logged in: the
    embedded broker ends their sessions (``EmbeddedBroker(revoked_clients=...)``)."""
    wanted = sorted(set(client_ids))
    found: set[str] = set()
    with Session(engine) as session:
        for start in range(0, len(wanted), _IN_CHUNK):
            found.update(
                session.exec(
                    select(DeviceRecord.id).where(
                        col(DeviceRecord.id).in_(wanted[start : start + _IN_CHUNK]),
                        col(DeviceRecord.decommissioned_at).is_not(None),
                    )
                )
            )
    return found


class DeviceAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """amqtt authentication: the controller's user, or an enrolled device by its hash."""

    @dataclass
    class Config:
        engine: Any = None
        topic_prefix: str = ""
        controller_username: str = DEFAULT_CONTROLLER_MQTT_USERNAME
        controller_password_hash: str = ""
        # Devices must come over TLS (settings.tls), and may use a password only if
        # password_login (settings.device_password_login).
        tls_required: bool = False
        password_login: bool = True

    async def authenticate(self, *, session: Any) -> bool:
        config = self.config
        username = getattr(session, "username", None)
        password = _password_text(getattr(session, "password", None))
        certificate = _peer_certificate(session)
        if certificate is not None and username != config.controller_username:
            return await self._certificate_login(session, certificate)
        if not username or password is None:
            return False
        if username == config.controller_username:
            return verify_mqtt_password(password, config.controller_password_hash)
        if not self._may_log_in(session, username):
            return False
        if config.tls_required and getattr(session, "ssl_object", None) is None:
            logger.info("refused MQTT login of %s: plain TCP, TLS is required", username)
            return False
        if not config.password_login:
            logger.info("refused MQTT login of %s: a password, a certificate is required", username)
            return False
        try:
            hashed = await asyncio.to_thread(_device_password_hash, config.engine, username)
        except (SQLAlchemyError, ValueError) as exc:
            logger.warning(
                "refused MQTT login of %s: cannot read the devices table: %s", username, exc
            )
            return False
        return hashed is not None and verify_mqtt_password(password, hashed)

    def _may_log_in(self, session: Any, device_id: str) -> bool:
        """The client id and the will must be the device's own."""
        if session.client_id != device_id:
            logger.info("refused MQTT login of %s: client id %r", device_id, session.client_id)
            return False
        if session.will_flag and session.will_topic != device_topic(
            self.config.topic_prefix, device_id, Channel.STATE
        ):
            logger.info("refused MQTT login of %s: will on %r", device_id, session.will_topic)
            return False
        return True

    async def _certificate_login(self, session: Any, certificate: bytes) -> bool:
        fingerprint = hashlib.sha256(certificate).hexdigest()
        try:
            holder = await asyncio.to_thread(_certificate_holder, self.config.engine, fingerprint)
        except (SQLAlchemyError, ValueError) as exc:
            logger.warning("refused an MQTT certificate login: cannot read the database: %s", exc)
            return False
        if holder is None:
            logger.info("refused MQTT login by certificate %s: revoked or unknown", fingerprint)
            return False
        username = getattr(session, "username", None)
        if username not in (None, "", holder):
            logger.info("refused MQTT login of %s with the certificate of %s", username, holder)
            return False
        if not self._may_log_in(session, holder):
            return False
        # The topic rules read the username: the certificate's device, whatever was sent.
        session.username = holder
        return True


class DeviceTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """amqtt topic checks: the controller anywhere, a device only on its own topics."""

    @dataclass
    class Config:
        topic_prefix: str = ""
        controller_username: str = DEFAULT_CONTROLLER_MQTT_USERNAME

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        username = getattr(session, "username", None)
        if not username or not topic or action is None:
            return False
        if username == self.config.controller_username:
            return True
        return device_may(self.config.topic_prefix, username, topic, action)


def embedded_broker_config(settings: Settings, engine: Engine) -> dict[str, Any]:
    """The ``amqtt.broker.Broker`` config: a TCP listener on ``mqtt_host:mqtt_port`` (on
    loopback with TLS on), a TLS listener on ``mqtt_host:mqtts_port`` with TLS on, and
    the two plugins above. The controller's client logs in with
    ``controller_mqtt_credentials(settings)`` (call it in the same process)."""
    username, password = controller_mqtt_credentials(settings)
    plain_host = urlsplit(settings.broker_url).hostname
    listeners: dict[str, Any] = {
        "default": {"type": "tcp", "bind": f"{plain_host}:{settings.mqtt_port}"}
    }
    if settings.tls:
        cert_file, key_file = server_certificate_files(settings)
        listeners["tls"] = {
            "type": "tcp",
            "bind": f"{settings.mqtt_host}:{settings.mqtts_port}",
            "ssl": True,
            # Client certificates are asked for and verified against the CA; a client
            # without one may still log in with a password (DeviceAuthPlugin decides).
            "cafile": str(settings.tls_dir / CA_CERT_FILE),
            "certfile": str(cert_file),
            "keyfile": str(key_file),
        }
    return {
        "listeners": listeners,
        "plugins": {
            f"{_PLUGIN_MODULE}.DeviceAuthPlugin": {
                "engine": engine,
                "topic_prefix": settings.topic_prefix,
                "controller_username": username,
                "controller_password_hash": hash_mqtt_password(password),
                "tls_required": settings.tls,
                "password_login": settings.device_password_login,
            },
            f"{_PLUGIN_MODULE}.DeviceTopicPlugin": {
                "topic_prefix": settings.topic_prefix,
                "controller_username": username,
            },
        },
    }


def mosquitto_acl(prefix: str, controller_username: str | None) -> str:
    """A Mosquitto ACL file: each device (username = device id) on its own topics."""
    lines = [
        "# Written by `edgefleet devices mosquitto-config`; regenerate it, do not edit it.",
        "# Each device logs in with its device id as username (%u).",
    ]
    lines += [f"pattern read {prefix}/%u/{channel.value}" for channel in DEVICE_SUBSCRIBES]
    lines += [f"pattern write {prefix}/%u/{channel.value}" for channel in DEVICE_PUBLISHES]
    if controller_username:
        lines += ["", "# The controller.", f"user {controller_username}"]
        lines.append(f"topic readwrite {prefix}/#")
    return "\n".join(lines) + "\n"


def enrolled_password_hashes(engine: Engine, column: str) -> list[tuple[str, str | None]]:
    """(device id, the hash in ``column``) of every device not decommissioned, by id; a
    ``ConfigError`` when the database cannot be read. For the brokers' login files."""
    try:
        with Session(engine) as session:
            rows = session.exec(
                select(DeviceRecord.id, getattr(DeviceRecord, column))
                .where(col(DeviceRecord.decommissioned_at).is_(None))
                .order_by(col(DeviceRecord.id))
            ).all()
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot read the devices from the database: {exc}") from exc
    return [(device_id, hashed) for device_id, hashed in rows]


@dataclass(frozen=True)
class MosquittoExport:
    devices: int
    controller_user: str | None  # the controller's login in the password file
    # With a CA in the data directory: the TLS files; the ACL then also names
    # ``controller_mqtt_username``, the common name of the controller's client certificate.
    tls: MosquittoTlsExport | None = None


def write_mosquitto_files(
    settings: Settings,
    *,
    passwords: Path,
    acl: Path,
    tls_config: Path | None = None,
    password_port: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> MosquittoExport:
    """Write the password file (mode 0600) and the ACL file from the database, and with a
    CA in the data directory the TLS files of ``mosquitto_tls.write_mosquitto_tls_files``
    (``tls_config``, ``password_port`` and ``environ`` go to it).

    Run on the controller host (it reads the database directly, like ``tokens create``).
    Enrolled devices that are not decommissioned get their stored ``$7$`` hash; the
    controller user is added when ``mqtt_username`` and ``mqtt_password`` are set. Each
    file is replaced atomically (Mosquitto never reads half of one) and keeps the owner of
    the file it replaces.
    """
    with_tls = has_certificate_authority(settings)
    engine = make_engine(settings.resolved_database_url)
    try:
        rows = enrolled_password_hashes(engine, "mqtt_password_hash")
        lines = [f"{device_id}:{hashed}" for device_id, hashed in rows]
        controller_user = None
        if settings.mqtt_username:
            controller_user, password = controller_mqtt_credentials(settings)
            lines.append(f"{controller_user}:{hash_mqtt_password(password)}")
        # Over TLS the controller logs in by its certificate, named controller_mqtt_username.
        acl_user = settings.controller_mqtt_username if with_tls else controller_user
        # Each file keeps the owner and group of the one it replaces, so a file chown'ed to
        # Mosquitto's user stays readable by it.
        for path, text, mode in (
            (passwords, "".join(f"{line}\n" for line in lines), PRIVATE_FILE_MODE),
            (acl, mosquitto_acl(settings.topic_prefix, acl_user), PUBLIC_FILE_MODE),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text.encode("utf-8"), mode=mode, keep_owner=True)
        # Last: its configuration names the two files above.
        tls = None
        if with_tls:
            tls = write_mosquitto_tls_files(
                settings,
                engine,
                passwords=passwords,
                acl=acl,
                config=tls_config,
                password_port=password_port,
                environ=environ,
            )
    finally:
        engine.dispose()
    return MosquittoExport(devices=len(rows), controller_user=controller_user, tls=tls)
