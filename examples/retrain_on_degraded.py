"""A webhook receiver that starts a retraining job when a model degrades on the fleet.

    EDGEFLEET_WEBHOOK_SECRET=… python examples/retrain_on_degraded.py \\
        --port 9000 --command "python train.py --model {model} --from-version {version}"

Point the controller at it with ``EDGEFLEET_WEBHOOK_URLS=http://HOST:9000/hook`` and the
same ``EDGEFLEET_WEBHOOK_SECRET``. For each ``model_degraded`` event it checks the
signature, skips events it has seen (delivery is at least once), writes the evidence to
``--evidence-dir/<event id>.json`` (the release, the figures, the devices) and runs
``--command`` with ``{model}``, ``{version}``, ``{metric}`` and ``{evidence}`` (the
evidence file) filled in. ``model_recovered`` is logged. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import shlex
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY_BYTES = 1024 * 1024
logger = logging.getLogger("retrain_on_degraded")


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return header is not None and hmac.compare_digest(expected, header)


def handle(event: dict[str, Any], *, command: str, evidence_dir: Path) -> str:
    """Act on one event; returns what was done, for the log."""
    kind, details = event.get("kind"), event.get("details") or {}
    if kind == "model_recovered":
        return f"{details.get('model')}:{details.get('version')} recovered ({details.get('note')})"
    if kind != "model_degraded":
        return f"ignored {kind}"
    evidence = evidence_dir / f"{event['id']}.json"
    if evidence.exists():
        return f"event {event['id']} seen already"
    evidence_dir.mkdir(parents=True, exist_ok=True)
    evidence.write_text(json.dumps(details, indent=2, sort_keys=True))
    words = [
        word.format(
            model=details.get("model", ""),
            version=details.get("version", ""),
            metric=(details.get("rule") or {}).get("metric", ""),
            evidence=evidence,
        )
        for word in shlex.split(command)
    ]
    subprocess.Popen(words)  # noqa: S603 - the operator's own command line
    return f"started {shlex.join(words)}"


def make_handler(secret: str, command: str, evidence_dir: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY_BYTES:
                self.send_response(413)
                self.end_headers()
                return
            body = self.rfile.read(length)
            if secret and not signature_ok(secret, body, self.headers.get("X-Edgefleet-Signature")):
                self.send_response(401)
                self.end_headers()
                return
            try:
                event = json.loads(body)
                logger.info(handle(event, command=command, evidence_dir=evidence_dir))
            except (ValueError, KeyError, TypeError, OSError) as exc:
                logger.error("could not act on the event: %s", exc)
                self.send_response(400)
                self.end_headers()
                return
            self.send_response(204)
            self.end_headers()

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--command", required=True, help="run for each model_degraded")
    parser.add_argument("--evidence-dir", type=Path, default=Path("degraded-events"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    secret = os.environ.get("EDGEFLEET_WEBHOOK_SECRET", "")
    if not secret:
        logger.warning("EDGEFLEET_WEBHOOK_SECRET is not set: events are not authenticated")
    handler = make_handler(secret, args.command, args.evidence_dir)
    server = ThreadingHTTPServer((args.host, args.port), handler)
    logger.info("listening on http://%s:%d/hook", args.host, args.port)
    server.serve_forever()


if __name__ == "__main__":
    main()
