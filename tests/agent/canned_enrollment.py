"""A stand-in controller that answers every enrollment with one canned answer."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from protocol import Envelope


class _CannedController(http.server.BaseHTTPRequestHandler):
    answer: bytes = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(201)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *_args: Any) -> None:
        pass


@contextmanager
def canned_enrollment(trust_root: Envelope, device_id: str = "cam-1") -> Iterator[str]:
    """Serve an enrollment answer for ``device_id`` holding ``trust_root``; yields the URL."""
    answer = {
        "device_id": device_id,
        "labels": {},
        "mqtt_username": device_id,
        "mqtt_password": "pw",
        "broker_url": "mqtt://127.0.0.1:1",
        "topic_prefix": "edgefleet/v1",
        "controller_url": "http://127.0.0.1:1",
        "controller_token": "ef_x_y",
        "trust_root": trust_root.to_json_obj(),
    }
    handler = type("Handler", (_CannedController,), {"answer": json.dumps(answer).encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
