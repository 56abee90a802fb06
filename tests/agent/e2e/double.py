"""A test double of the controller, after python-tuf's repository simulator.

It signs releases and deployments on demand with a test keyring, serves artifacts over
real HTTP (and misbehaves on demand), publishes desired state on a real broker, and
collects what the device reports, deduplicated by (device, seq) as the controller does.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from protocol import (
    Artifact,
    Channel,
    Command,
    Deployment,
    DesiredState,
    Envelope,
    Event,
    ProbationPolicy,
    ReferenceProfile,
    Release,
    ReleaseRef,
    Role,
    ShadowOrder,
    State,
    device_topic,
    parse_device_topic,
)
from tensors import GoldenCase
from tests.brokers import BrokerEndpoint
from tests.check_bundles import bundle_bytes, ref_of
from tests.factories import Keyring, make_release
from tests.mqtt_client import TestClient

WAIT_S = 60.0


@dataclass
class ArtifactServer:
    """Serves artifacts by SHA-256, with Range; ``mode`` makes model downloads misbehave.

    Check bundles (added with ``bundle=True``) are always served as they are: the modes
    test how the agent fetches a model, and a bundle is fetched the same way after it.
    """

    blobs: dict[str, bytes] = field(default_factory=dict)
    mode: str = "normal"  # normal | tampered | oversize | cut_once | trickle
    requests: list[dict[str, str]] = field(default_factory=list)
    bundles: set[str] = field(default_factory=set)
    _cut_done: bool = False

    def add(self, data: bytes, *, bundle: bool = False) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        if bundle:
            self.bundles.add(digest)
        return digest

    @contextmanager
    def running(self) -> Iterator[str]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:
                double.requests.append({"path": self.path, **dict(self.headers)})
                digest = self.path.rsplit("/", 1)[-1]
                data = double.blobs.get(digest)
                if data is None:
                    self.send_error(404)
                    return
                double._serve(self, data, as_is=digest in double.bundles)

        return Handler

    def _serve(self, handler: BaseHTTPRequestHandler, data: bytes, *, as_is: bool) -> None:
        mode = "normal" if as_is else self.mode
        start = 0
        ranged = handler.headers.get("Range", "")
        if ranged.startswith("bytes=") and mode != "oversize":
            start = int(ranged.removeprefix("bytes=").split("-")[0])
        if mode == "tampered":
            data = bytes(b ^ 0x01 for b in data[:16]) + data[16:]
        if mode == "oversize":
            data = data + b"\0" * 4096
        body = data[start:]
        handler.send_response(206 if start else 200)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("ETag", '"fixed"')
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if mode == "cut_once" and not self._cut_done:
            self._cut_done = True
            handler.wfile.write(body[: len(body) // 3])
            handler.wfile.flush()
            handler.close_connection = True
            return
        if mode == "trickle":
            for i in range(len(body)):
                handler.wfile.write(body[i : i + 1])
                handler.wfile.flush()
                time.sleep(0.05)
            return
        handler.wfile.write(body)


class ControllerDouble:
    def __init__(self, broker: BrokerEndpoint, prefix: str, keyring: Keyring | None = None) -> None:
        self.broker = broker
        self.prefix = prefix
        self.keyring = keyring or Keyring()
        self.artifacts = ArtifactServer()
        self.url = ""  # the artifact server's base URL, once it runs
        self.events: dict[tuple[str, int], Event] = {}
        self.states: dict[str, State] = {}
        self._lock = threading.Lock()
        self._client = TestClient(broker, client_id="controller-double")
        self._sequence = 0
        self._command_sequence = 0
        # Each device's newest deployment envelope per model: its retained desired state.
        self._desired: dict[str, dict[str, dict[str, Any]]] = {}

    def __enter__(self) -> ControllerDouble:
        self._client.__enter__()
        self._client.subscribe(f"{self.prefix}/+/events")
        self._client.subscribe(f"{self.prefix}/+/state")
        threading.Thread(target=self._collect, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.__exit__(None, None, None)

    def _collect(self) -> None:
        while True:
            try:
                message = self._client.receive(timeout_s=3600)
            except Exception:
                return
            device, channel = parse_device_topic(self.prefix, message.topic)
            with self._lock:
                if channel is Channel.EVENTS:
                    event = Event.from_payload(bytes(message.payload))
                    self.events.setdefault((device, event.seq), event)
                elif channel is Channel.STATE and message.payload:
                    self.states[device] = State.from_payload(bytes(message.payload))

    # Signing on demand ------------------------------------------------------------

    def release_for(
        self,
        model_file: Path,
        *,
        golden: Sequence[GoldenCase] = (),
        reference_profile: ReferenceProfile | None = None,
        **overrides: Any,
    ) -> Release:
        """A release of ``model_file``; it and its check bundle are served as artifacts."""
        data = model_file.read_bytes()
        digest = self.artifacts.add(data)
        artifact = Artifact(
            sha256=digest,
            length=len(data),
            format="tflite" if model_file.suffix == ".tflite" else "onnx",
            filename=model_file.name,
        )
        bundle = bundle_bytes(golden, reference_profile)
        self.artifacts.add(bundle, bundle=True)
        return make_release(artifact=artifact, check_bundle=ref_of(bundle), **overrides)

    def deployment(
        self,
        device_id: str,
        release: Release,
        *,
        now: datetime,
        signer: Role = Role.DEPLOYMENT,
        release_signer: Role = Role.RELEASE,
        lifetime: timedelta = timedelta(hours=1),
        release_envelope: Envelope | None = None,
        **overrides: Any,
    ) -> Envelope:
        """A signed deployment of ``release`` (or of an already signed release envelope)."""
        self._sequence += 1
        fields: dict[str, Any] = {
            "device_id": device_id,
            "model": release.model,
            "sequence": self._sequence,
            "issued_at": now,
            "expires": now + lifetime,
            "release": (
                release_envelope or release.sign(self.keyring.keys[release_signer])
            ).to_json_obj(),
            "probation": ProbationPolicy(window_s=1, min_requests=0, max_extension_s=0),
        }
        fields.update(overrides)
        return Deployment(**fields).sign(self.keyring.keys[signer])

    def removal(self, device_id: str, model: str, *, now: datetime) -> Envelope:
        """A signed order to remove ``model`` from the device."""
        self._sequence += 1
        return Deployment(
            device_id=device_id,
            model=model,
            sequence=self._sequence,
            issued_at=now,
            expires=now + timedelta(hours=1),
            remove=True,
        ).sign(self.keyring.keys[Role.DEPLOYMENT])

    def shadow(self, device_id: str, model: str, order: ShadowOrder, *, now: datetime) -> Envelope:
        """A signed deployment that orders a shadow of ``model`` (serving does not change)."""
        self._sequence += 1
        return Deployment(
            device_id=device_id,
            model=model,
            sequence=self._sequence,
            issued_at=now,
            expires=now + timedelta(hours=1),
            shadow=order,
        ).sign(self.keyring.keys[Role.DEPLOYMENT])

    def command(self, device_id: str, action: str, *, now: datetime, **overrides: Any) -> Envelope:
        self._command_sequence += 1
        fields: dict[str, Any] = {
            "device_id": device_id,
            "sequence": self._command_sequence,
            "issued_at": now,
            "expires": now + timedelta(minutes=10),
            "action": action,
        }
        fields.update(overrides)
        return Command(**fields).sign(self.keyring.keys[Role.DEPLOYMENT])

    def publish_command(self, device_id: str, envelope: Envelope) -> None:
        topic = device_topic(self.prefix, device_id, Channel.CMD)
        self._client.publish(topic, envelope.to_bytes())

    def publish_desired(self, device_id: str, envelope: Envelope | bytes) -> None:
        """Put ``envelope`` in the device's desired state, beside its other models'.

        Raw bytes are published as they are (for malformed desired states).
        """
        if isinstance(envelope, bytes):
            payload = envelope
        else:
            model = json.loads(envelope.payload)["model"]
            entries = self._desired.setdefault(device_id, {})
            entries[model] = envelope.to_json_obj()
            desired = DesiredState(
                device_id=device_id, deployments=[entries[name] for name in sorted(entries)]
            )
            payload = desired.to_payload()
        topic = device_topic(self.prefix, device_id, Channel.DESIRED)
        self._client.publish(topic, payload, retain=True)

    # Observing the device ---------------------------------------------------------

    def active(self, device_id: str, model: str) -> ReleaseRef | None:
        """What the device's last state says ``model`` serves."""
        with self._lock:
            state = self.states.get(device_id)
        if state is None or not state.online:
            return None
        return next((m.active for m in state.models if m.model == model), None)

    def device_events(self, device_id: str) -> list[Event]:
        with self._lock:
            return [e for (d, _), e in sorted(self.events.items()) if d == device_id]

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; events: {self.event_summary()}")

    def final_events(self, device_id: str, sequence: int) -> list[Event]:
        return [
            e
            for e in self.device_events(device_id)
            if e.deployment_sequence == sequence
            and e.type in ("committed", "failed", "rolled_back")
        ]

    def wait_for_final(self, device_id: str, sequence: int, timeout_s: float = WAIT_S) -> Event:
        self.wait_for(
            lambda: bool(self.final_events(device_id, sequence)),
            f"final event of {sequence}",
            timeout_s,
        )
        return self.final_events(device_id, sequence)[0]

    def wait_for_event(self, device_id: str, event_type: str, timeout_s: float = WAIT_S) -> Event:
        def found() -> bool:
            return any(e.type == event_type for e in self.device_events(device_id))

        self.wait_for(found, f"a {event_type} event", timeout_s)
        return next(e for e in self.device_events(device_id) if e.type == event_type)

    def event_summary(self) -> list[tuple[str, int, str, str | None]]:
        with self._lock:
            return [(d, s, e.type, e.reason) for (d, s), e in sorted(self.events.items())]
