"""An idle HTTPS client cannot hold the controller's shutdown.

Closing a TLS connection waits for the client's close_notify; a client that keeps an idle
keep-alive connection open never sends it, and asyncio gives up only after 30 s. The
controller then took 30 s to stop, longer than a supervisor's stop timeout, and was
killed before its broker and fleet loops stopped. It now drops such a connection once
the TLS close handshake is all that is left (``controller.server.TLS_CLOSE_GRACE_S``).
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

from controller.ca import CA_CERT_FILE, init_ca
from controller.server import TLS_CLOSE_GRACE_S
from tests.security.http_server import controller_settings, read_answer, request_head, served


def test_an_idle_https_connection_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    settings = controller_settings(tmp_path, tls=True)
    init_ca(settings.tls_dir, name="test CA")
    context = ssl.create_default_context(cafile=str(settings.tls_dir / CA_CERT_FILE))
    with served(settings) as controller:
        raw = socket.create_connection(("127.0.0.1", controller.port), timeout=5)
        idle = context.wrap_socket(raw, server_hostname="127.0.0.1")
        idle.sendall(request_head("GET", "/healthz", {}))
        assert read_answer(idle)[0] == 200
        stopping = time.monotonic()
    try:
        assert time.monotonic() - stopping < TLS_CLOSE_GRACE_S + 3.0
    finally:
        idle.close()
