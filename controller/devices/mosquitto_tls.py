"""Mosquitto's TLS configuration, written from the controller's CA and database.

``write_mosquitto_tls_files`` (called by ``broker_auth.write_mosquitto_files`` when the
data directory has a CA) writes, next to the ACL file:

- ``edgefleet-ca.crt``, ``edgefleet-server.crt``, ``edgefleet-server.key``: copies of the
  CA and of the server certificate from ``<data_dir>/tls``. Mosquitto runs as its own user
  and reads them after it drops root; ``<data_dir>/tls`` is the controller's (mode 0700,
  keys 0600), so Mosquitto gets copies it may own instead;
- ``edgefleet.crl``: a CRL signed by the CA listing every device certificate revoked
  (decommissioning, re-enrollment) that has not expired yet;
- a configuration file (``edgefleet-tls.conf`` unless told otherwise) for Mosquitto's
  ``include_dir`` or ``-c``: ``per_listener_settings true``, then a TLS listener on
  ``mqtts_port`` that requires a client certificate of the CA and not in the CRL, takes
  the certificate's common name as the login name (``use_identity_as_username``: the
  device id, or the controller's ``controller_mqtt_username``) and as the client id
  (``use_username_as_clientid``: no certificate can take over another device's session);
  and, while ``device_password_login`` is on, a TLS listener without client certificates
  on ``password_port`` for devices that still log in with their password.

Invariants:
- every file is replaced atomically (``write_atomic``) and keeps the owner of the file it
  replaces, so files chown'ed to Mosquitto's user stay readable by it; the key is 0600;
- the certificates and the CRL are written before the configuration that names them;
- the CA key is read (to sign the CRL) and nothing under ``<data_dir>/tls`` is written.

Mosquitto reads ``crlfile`` at start and, in Mosquitto 2 (2.0.11 checked by
``tests/security/test_mosquitto_tls.py``), again on SIGHUP: a revocation takes effect at
the next export and reload. A connection open at that moment stays open until the device
reconnects; restart Mosquitto to end it at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from durable import PRIVATE_FILE_MODE, PUBLIC_FILE_MODE, write_atomic

from ..ca import CA_CERT_FILE, CA_PASSPHRASE_ENV, CertificateAuthority, server_certificate_files
from ..errors import ConfigError
from ..settings import Settings
from .tables import DeviceCertificate

__all__ = [
    "CRL_VALIDITY",
    "MOSQUITTO_CA_FILE",
    "MOSQUITTO_CRL_FILE",
    "MOSQUITTO_SERVER_CERT_FILE",
    "MOSQUITTO_SERVER_KEY_FILE",
    "MOSQUITTO_TLS_CONF_FILE",
    "MosquittoTlsExport",
    "has_certificate_authority",
    "mosquitto_tls_conf",
    "revoked_certificates",
    "write_mosquitto_tls_files",
]

MOSQUITTO_CA_FILE = "edgefleet-ca.crt"
MOSQUITTO_SERVER_CERT_FILE = "edgefleet-server.crt"
MOSQUITTO_SERVER_KEY_FILE = "edgefleet-server.key"
MOSQUITTO_CRL_FILE = "edgefleet.crl"
MOSQUITTO_TLS_CONF_FILE = "edgefleet-tls.conf"
# OpenSSL refuses every client once a CRL is past its nextUpdate, so it is long; the
# export is meant to run far more often (after each decommissioning, and daily).
CRL_VALIDITY = timedelta(days=365)
MAX_CONNECTIONS = 10000


@dataclass(frozen=True)
class MosquittoTlsExport:
    config: Path
    revoked: int  # certificates in the CRL
    password_port: int | None  # the password listener's port; None when passwords are off


def has_certificate_authority(settings: Settings) -> bool:
    return (settings.tls_dir / CA_CERT_FILE).exists()


def _utc(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes; they were stored in UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def revoked_certificates(engine: Engine, *, now: datetime) -> list[tuple[str, datetime]]:
    """(serial hex, revoked at) of revoked device certificates that have not expired:
    an expired certificate is refused by its date, the CRL need not name it."""
    try:
        with Session(engine) as session:
            rows = session.exec(
                select(
                    DeviceCertificate.serial,
                    DeviceCertificate.revoked_at,
                    DeviceCertificate.expires_at,
                )
                .where(col(DeviceCertificate.revoked_at).is_not(None))
                .order_by(col(DeviceCertificate.serial))
            ).all()
    except SQLAlchemyError as exc:
        raise ConfigError(f"cannot read the device certificates from the database: {exc}") from exc
    return [
        (serial, _utc(revoked_at))
        for serial, revoked_at, expires_at in rows
        if revoked_at is not None and _utc(expires_at) > now
    ]


def mosquitto_tls_conf(
    settings: Settings,
    *,
    directory: Path,
    passwords: Path,
    acl: Path,
    password_port: int | None,
) -> str:
    """The configuration text; ``directory`` holds the copies and the CRL."""
    host = settings.mqtt_host
    tls_files = [
        f"certfile {directory / MOSQUITTO_SERVER_CERT_FILE}",
        f"keyfile {directory / MOSQUITTO_SERVER_KEY_FILE}",
    ]
    lines = [
        "# Written by `edgefleet devices mosquitto-config`; regenerate it, do not edit it.",
        "# Mosquitto reads it, the certificates, the CRL, the password and ACL files at start",
        "# and on SIGHUP (systemctl reload mosquitto).",
        "per_listener_settings true",
        "",
        "# Devices, and the controller, with a client certificate of the edgefleet CA. The",
        "# certificate's common name is the login (the device id) and the client id.",
        f"listener {settings.mqtts_port} {host}",
        f"cafile {directory / MOSQUITTO_CA_FILE}",
        *tls_files,
        f"crlfile {directory / MOSQUITTO_CRL_FILE}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "allow_anonymous false",
        f"acl_file {acl}",
        f"max_connections {MAX_CONNECTIONS}",
    ]
    if password_port is not None:
        lines += [
            "",
            "# Devices that still log in with their MQTT password (device_password_login):",
            "# TLS, no client certificate. Off once every device has its certificate.",
            f"listener {password_port} {host}",
            *tls_files,
            "require_certificate false",
            "use_username_as_clientid true",
            "allow_anonymous false",
            f"password_file {passwords}",
            f"acl_file {acl}",
            f"max_connections {MAX_CONNECTIONS}",
        ]
    return "\n".join(lines) + "\n"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} is missing: run `edgefleet ca init` (it issues the server certificate)"
        ) from exc


def write_mosquitto_tls_files(
    settings: Settings,
    engine: Engine,
    *,
    passwords: Path,
    acl: Path,
    config: Path | None = None,
    password_port: int | None = None,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> MosquittoTlsExport:
    """Write the CA and server certificate copies, the CRL and the configuration.

    ``config`` defaults to ``edgefleet-tls.conf`` beside ``acl``; ``password_port`` to
    ``mqtts_port + 1``, and is unused with ``device_password_login`` off. The CA key's
    passphrase comes from ``EDGEFLEET_CA_KEY_PASSPHRASE`` in ``environ``.
    """
    env = os.environ if environ is None else environ
    now = now or datetime.now(UTC)
    directory = acl.parent.resolve()
    config = config or directory / MOSQUITTO_TLS_CONF_FILE
    if settings.device_password_login:
        password_port = password_port or settings.mqtts_port + 1
        if not 0 < password_port < 65536 or password_port == settings.mqtts_port:
            raise ConfigError(
                f"the password listener's port {password_port} is not a free port number "
                f"apart from mqtts_port {settings.mqtts_port}"
            )
    else:
        password_port = None
    passphrase = env.get(CA_PASSPHRASE_ENV, "").encode() or None
    authority = CertificateAuthority.load(settings.tls_dir, passphrase)
    revoked = revoked_certificates(engine, now=now)
    crl = authority.revocation_list(revoked, now=now, next_update=CRL_VALIDITY)
    cert_file, key_file = server_certificate_files(settings)
    text = mosquitto_tls_conf(
        settings,
        directory=directory,
        passwords=passwords.resolve(),
        acl=acl.resolve(),
        password_port=password_port,
    )
    # The key before its certificate, and everything before the configuration naming it.
    for path, data, mode in (
        (directory / MOSQUITTO_SERVER_KEY_FILE, _read(key_file), PRIVATE_FILE_MODE),
        (directory / MOSQUITTO_SERVER_CERT_FILE, _read(cert_file), PUBLIC_FILE_MODE),
        (directory / MOSQUITTO_CA_FILE, authority.pem.encode("ascii"), PUBLIC_FILE_MODE),
        (directory / MOSQUITTO_CRL_FILE, crl, PUBLIC_FILE_MODE),
        (config, text.encode("utf-8"), PUBLIC_FILE_MODE),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, mode=mode, keep_owner=True)
    return MosquittoTlsExport(config=config, revoked=len(revoked), password_port=password_port)
