"""MQTT logins over TLS, one raw CONNECT each, for the broker TLS tests.

``login`` answers what the broker did with one CONNECT: ``accepted``, ``refused (N)``
(its CONNACK return code), ``tls refused: …`` (the handshake or a TLS alert ended it) or
``closed``. Raw sockets, not paho: a refused TLS client would otherwise reconnect in a
background thread until the test gave up waiting.
"""

from __future__ import annotations

import socket
import ssl
import struct
from datetime import datetime, timedelta
from pathlib import Path

from agent.link.device_identity import DeviceKey
from controller.ca import DEVICE_CERT_LIFETIME, CertificateAuthority, IssuedCertificate

TIMEOUT_S = 10.0
ACCEPTED = "accepted"


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, username: str | None, password: str | None) -> bytes:
    flags = 0x02  # clean session
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", 30) + payload
    assert len(body) < 128
    return b"\x10" + bytes([len(body)]) + body


def login(
    port: int,
    *,
    context: ssl.SSLContext | None,
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    host: str = "127.0.0.1",
) -> str:
    """One CONNECT to ``host:port`` (over TLS with ``context``); what the broker did."""
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S) as raw:
            sock = raw if context is None else context.wrap_socket(raw, server_hostname=host)
            sock.sendall(connect_packet(client_id, username, password))
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    return "closed"
                connack += chunk
    except ssl.SSLError as exc:
        return f"tls refused: {exc.reason or exc}"
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    return ACCEPTED if connack[3] == 0 else f"refused ({connack[3]})"


def client_context(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file))
    return context


def issue_device_files(
    authority: CertificateAuthority,
    device_id: str,
    directory: Path,
    *,
    now: datetime,
    lifetime: timedelta = DEVICE_CERT_LIFETIME,
) -> tuple[Path, Path, IssuedCertificate]:
    """A key made as the agent makes it and a certificate for it: (cert, key, issued)."""
    key = DeviceKey.generate(device_id)
    issued = authority.issue_device_certificate(key.csr_pem, device_id, now=now, lifetime=lifetime)
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{device_id}.crt", directory / f"{device_id}.key"
    cert_file.write_text(issued.pem)
    key_file.write_bytes(key.private_pem)
    key_file.chmod(0o600)
    return cert_file, key_file, issued
