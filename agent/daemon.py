"""The device daemon: startup, run, shutdown as three named phases.

Startup loads the trust state (or installs the provisioned trust root), opens the
outbox and the model store, and finishes every update a crash interrupted, before the
device talks to anyone. Run keeps the MQTT link up and hands each desired state to the
models' updaters (``ModelUpdates``: one worker per model, ADR 0003). Shutdown stops
taking work, lets the link publish the offline state, and cancels what is left after a
timeout. Signal handlers (installed by the CLI) only set the stop event.

Besides the link, run keeps a telemetry task (every ``stats_window_s``, each serving
model's window) and, from the first capture policy on (persisted, or ordered by a
command), the sample-capture task; with capture never ordered there is nothing for it to
do, so no task waits for it. A host of many daemons in one process (the simulator) may
drive telemetry itself (``own_telemetry_task=False``, then ``publish_telemetry`` every
window): each daemon's own loop would be one more task and timer per device.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from protocol import Channel, Envelope, ReleaseRef, TelemetryBatch, TrustRoot, device_topic

from .backends import load_backend, runtime_options
from .clock import Clock, SystemClock
from .config import AgentConfig
from .errors import (
    AgentError,
    ConfigurationError,
    DuplicateCommandError,
    LocalStateError,
    RefusalError,
)
from .link.certificate_renewal import (
    CHECK_INTERVAL_S,
    RENEW_BEFORE,
    RETRY_INTERVAL_S,
    certificate_expiry,
    finish_interrupted_renewal,
    renew_certificate,
)
from .link.mqtt import LinkSettings, Message, MqttLink
from .link.outbox import Outbox, OutboxQueue
from .link.reporting import LinkReporter, offline_state
from .link.sample_upload import run_capture
from .serving.host import ServingHost, recorder_of
from .serving.server import BackendLoader
from .stats.capture import BadCapturePolicyError, CaptureKeeper
from .stats.recorder import StatsRecorder
from .stats.telemetry import to_telemetry_window
from .tls import device_tls_context, pinned_ca_context
from .update.fetcher import Fetcher
from .update.model_updates import ModelUpdates
from .update.state_files import ReleaseIndex, TrustKeeper, load_trust_state, persist_trust_state
from .update.trust import verify_command
from .update.trust_state import TrustState
from .update.updater import ModelChecker

__all__ = ["AgentDaemon", "open_trust_state"]

logger = logging.getLogger(__name__)


def open_trust_state(config: AgentConfig, path: Path) -> TrustState:
    """The persisted trust state, or a new one from the provisioned trust root."""
    if path.exists():
        return _shared_trust_root(load_trust_state(path))
    try:
        provisioned = config.trust_root.read_bytes()
    except OSError as exc:
        raise LocalStateError(f"cannot read the trust root {config.trust_root}: {exc}") from exc
    state = TrustState.initial(provisioned)
    persist_trust_state(path, state)
    logger.info("installed trust root v%d from %s", state.trust_root_version, config.trust_root)
    return _shared_trust_root(state)


# Trust roots this process loaded, by their envelope: the agents of a simulator share the
# same few, and a parsed one is several KiB.
MAX_SHARED_TRUST_ROOTS = 8
_shared_trust_roots: dict[Envelope, tuple[Envelope, TrustRoot]] = {}


def _shared_trust_root(state: TrustState) -> TrustState:
    """``state`` holding the process's copy of its trust root when one with the same
    envelope was loaded before: the same bytes, verified the same way, so the same value
    (both are frozen)."""
    envelope = state.trust_root_envelope
    known = _shared_trust_roots.get(envelope)
    if known is not None and known[1] == state.trust_root:
        return dataclasses.replace(state, trust_root_envelope=known[0], trust_root=known[1])
    if len(_shared_trust_roots) < MAX_SHARED_TRUST_ROOTS:
        _shared_trust_roots[envelope] = (envelope, state.trust_root)
    return state


# The jitter of the link's reconnect backoff: not a secret, and one generator serves
# every daemon of the process (a simulator's thousands need not hold one each).
_BACKOFF_JITTER = random.Random()  # noqa: S311 - jitter, not a secret

# A trust root this close to its expiry is logged at start (the controller flags it too).
TRUST_ROOT_WARNING = timedelta(days=30)


def _warn_if_trust_root_expires_soon(state: TrustState, now: datetime) -> None:
    left = state.trust_root.expires - now
    if left < TRUST_ROOT_WARNING:
        logger.warning(
            "trust root v%d expires at %s (%d days): after that every order is refused; "
            "the controller's operator must run 'edgefleet keys rotate'",
            state.trust_root_version,
            state.trust_root.expires.isoformat(),
            left.days,
        )


class AgentDaemon:
    def __init__(
        self,
        config: AgentConfig,
        *,
        fetcher: Fetcher,
        check_model: ModelChecker,
        clock: Clock | None = None,
        load_backend: BackendLoader = load_backend,
        on_publish: Callable[[Message], None] | None = None,
        outbox: OutboxQueue | None = None,
        own_telemetry_task: bool = True,
    ) -> None:
        """``load_backend``, ``on_publish``, ``outbox`` and ``own_telemetry_task`` are for
        the simulator and for applications that embed the agent: how models are loaded, a
        look at every message queued, where queued messages wait (default:
        ``outbox.sqlite``), and whether ``run`` keeps its own telemetry loop (False: the
        host calls ``publish_telemetry`` every ``stats_window_s``)."""
        self.config = config
        self._on_publish = on_publish
        self._own_telemetry_task = own_telemetry_task
        self._capture_task: asyncio.Task[None] | None = None
        self.clock = clock or SystemClock(config.clock_offset_s)
        data_dir = config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        # Before the TLS files are read: a crash may have left a renewal half done.
        finish_interrupted_renewal(config)
        self.outbox: OutboxQueue = (
            outbox if outbox is not None else Outbox(data_dir / "outbox.sqlite")
        )
        self.link = MqttLink(
            LinkSettings(
                host=config.broker_host,
                port=config.broker_port,
                client_id=config.device_id,
                username=config.mqtt_username,
                password=config.mqtt_password,
                tls=config.broker_tls,
                tls_context=device_tls_context(config) if config.broker_tls else None,
                other_nodes=tuple((node.host, node.port) for node in config.broker_addresses[1:]),
            ),
            outbox=self.outbox,
            will=self._state_message(offline_state(config.device_id).to_payload()),
            birth=self._state_message(b""),  # replaced below, once the reporter exists
            subscriptions=[
                (device_topic(config.topic_prefix, config.device_id, Channel.DESIRED), 1),
                (device_topic(config.topic_prefix, config.device_id, Channel.CMD), 1),
            ],
            rng=_BACKOFF_JITTER,
        )
        self._telemetry_topic = device_topic(
            config.topic_prefix, config.device_id, Channel.TELEMETRY
        )
        self.reporter = LinkReporter(
            device_id=config.device_id,
            prefix=config.topic_prefix,
            outbox=self.outbox,
            publish=self._publish,
            clock=self.clock,
            snapshot=self._snapshot,
        )
        self.serving = ServingHost(
            options=runtime_options(
                providers=tuple(config.execution_providers),
                intra_op_threads=config.inference_threads,
            ),
            window_s=config.stats_window_s,
            host=config.inference_host,
            port=config.inference_port,
            socket_path=config.inference_socket,
            load_backend=load_backend,
            max_body_bytes=config.inference_max_body_bytes,
            max_json_body_bytes=config.inference_max_json_body_bytes,
            body_budget_bytes=config.inference_body_budget_bytes,
        )
        trust_path = data_dir / "trust.json"
        self.trust = TrustKeeper(trust_path, open_trust_state(config, trust_path))
        _warn_if_trust_root_expires_soon(self.trust.state, self.clock.now())
        self.releases = ReleaseIndex(data_dir / "releases.json")
        # Sample capture: off for every model until a signed capture command.
        self.capture = CaptureKeeper(
            data_dir / "capture", device_id=config.device_id, clock=self.clock
        )
        self.models = ModelUpdates(
            config,
            trust=self.trust,
            releases=self.releases,
            fetcher=fetcher,
            check_model=check_model,
            reporter=self.reporter,
            clock=self.clock,
            serving=self.serving,
        )
        self.link.birth = self._state_message(self.reporter.online_state().to_payload())

    def _state_message(self, payload: bytes) -> Message:
        topic = device_topic(self.config.topic_prefix, self.config.device_id, Channel.STATE)
        return Message(topic, payload, qos=1, retain=True)

    def _publish(self, message: Message) -> None:
        # The birth, republished at every connect, is the latest state, not the first.
        if message.topic == self.reporter.state_topic and message.retain:
            self.link.birth = message
        self.link.publish(message)
        if self._on_publish is not None:
            self._on_publish(message)

    def _snapshot(self) -> Mapping[str, Any]:
        # Called only once __init__ has built the models' updaters.
        return {
            "phase": self.models.phase,
            "models": self.models.model_states(),
            "trust_root_version": self.trust.state.trust_root_version,
            "trust_root_expires_at": self.trust.state.trust_root.expires,
            "inference_threads": self.serving.options.intra_op_threads,
        }

    async def recover(self) -> None:
        """Finish whatever updates a crash interrupted, before talking to anyone."""
        await self.models.recover()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set. ``BrokerAuthError`` ends it at once."""
        await self.recover()
        await self.models.serve_current()
        if self.config.inference_api:
            try:
                await self.serving.api.start()
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot serve the inference API on port {self.config.inference_port}: {exc}"
                ) from exc
        telemetry = (
            asyncio.create_task(self._publish_telemetry(), name="telemetry")
            if self._own_telemetry_task
            else None
        )
        renewal = (
            asyncio.create_task(self._renew_certificate(), name="certificate-renewal")
            if self._renews_certificate
            else None
        )
        if self.capture.policies:
            self._start_capture()
        try:
            await self.link.run(self._on_message, stop)
        finally:
            capture, self._capture_task = self._capture_task, None
            for task in (telemetry, renewal, capture):
                if task is not None:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                # asyncio.timeout, not wait_for, which can lose a cancellation on 3.11.
                async with asyncio.timeout(self.config.shutdown_timeout_s):
                    waits = [self.models.stop(), *([telemetry] if telemetry else [])]
                    await asyncio.gather(*waits, return_exceptions=True)
            if self.config.inference_api:
                await self.serving.api.stop()
            self.outbox.close()

    def _start_capture(self) -> None:
        """Start the sample-capture task, once: a policy exists from now on."""
        if self._capture_task is None or self._capture_task.done():
            self._capture_task = asyncio.create_task(
                run_capture(
                    self.config,
                    self.capture,
                    self._serving_recorders,
                    upload_interval_s=self.config.capture_upload_interval_s,
                ),
                name="sample-capture",
            )

    @property
    def _renews_certificate(self) -> bool:
        # Without a client certificate and a token there is nothing to renew.
        return self.config.tls_cert_file is not None and self.config.controller_token is not None

    async def _renew_certificate(self) -> None:
        """Renew the client certificate when it expires within ``RENEW_BEFORE``."""
        if not self._renews_certificate:
            return
        while True:
            expiry = certificate_expiry(self.config)
            delay_s = CHECK_INTERVAL_S
            if expiry is None or expiry - self.clock.now() < RENEW_BEFORE:
                try:
                    expiry = await renew_certificate(self.config)
                except AgentError as exc:
                    logger.warning(
                        "could not renew the client certificate (it expires %s): %s",
                        expiry,
                        exc,
                    )
                    delay_s = RETRY_INTERVAL_S
                else:
                    pinned_ca_context.cache_clear()
                    self.link.use_tls_context(device_tls_context(self.config))
                    logger.info("renewed the client certificate; it expires %s", expiry)
            await asyncio.sleep(delay_s)

    async def _publish_telemetry(self) -> None:
        """Every statistics window, queue each serving model's window as telemetry."""
        while True:
            await asyncio.sleep(self.config.stats_window_s)
            self.publish_telemetry()

    def publish_telemetry(self) -> None:
        """Queue each serving model's window that is due (and had requests) as telemetry,
        in one batch. The daemon's telemetry task calls it every ``stats_window_s``."""
        windows = []
        for loaded in self.serving.serving():
            recorder = recorder_of(loaded)
            window = recorder.roll(time.monotonic()) if recorder else None
            if window is None or window.requests == 0:
                continue
            windows.append(
                to_telemetry_window(
                    window,
                    model=loaded.name,
                    release=self._release_serving(loaded.name),
                    window_start=self.clock.now() - timedelta(seconds=window.window_s),
                    shadow=self.models.shadows.take_window(loaded.name),
                )
            )
        if not windows:
            return
        batch = TelemetryBatch(
            device_id=self.config.device_id,
            seq=self.outbox.next_sequence("telemetry"),
            windows=windows,
        )
        self._publish(Message(self._telemetry_topic, batch.to_payload(), qos=1, retain=False))

    def _serving_recorders(self) -> list[tuple[str, int | None, StatsRecorder | None]]:
        serving = []
        for loaded in self.serving.serving():
            release = self._release_serving(loaded.name)
            version = release.version if release is not None else None
            serving.append((loaded.name, version, recorder_of(loaded)))
        return serving

    def _release_serving(self, model: str) -> ReleaseRef | None:
        updater = self.models.updaters.get(model)
        return updater.release_of(updater.store.current_sha256()) if updater else None

    async def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic.endswith("/" + Channel.DESIRED.value):
            if payload:  # an empty retained message: no desired state
                self.models.submit(payload)
        elif payload:
            self._handle_command(payload)

    def _handle_command(self, payload: bytes) -> None:
        """Verify and run a signed command; it may carry a newer trust root."""
        try:
            verified = verify_command(
                payload,
                self.trust.state,
                device_id=self.config.device_id,
                now=self.clock.now(),
            )
        except DuplicateCommandError:
            return
        except RefusalError as exc:
            logger.warning("refused a command: %s: %s", exc.reason, exc)
            self.reporter.event(
                "command_refused", journal=None, reason=exc.reason, details={"error": str(exc)}
            )
            return
        self.trust.accept_command(verified)
        action = verified.command.action
        details: dict[str, Any] = {"action": action, "sequence": verified.command.sequence}
        if action == "resync":
            self.reporter.state_changed()
        elif action == "capture":
            try:
                details |= self.capture.order(verified.command.args)
            except BadCapturePolicyError as exc:
                self.reporter.event(
                    "command_refused",
                    journal=None,
                    reason=exc.reason,
                    details={**details, "error": str(exc)},
                )
                return
            self._start_capture()
        elif action == "diagnostics":
            details |= {
                "phase": self.models.phase,
                "models": self.models.diagnostics(),
                "outbox_pending": len(self.outbox),
                "outbox_dropped": self.outbox.dropped,
                "trust_root_version": self.trust.state.trust_root_version,
            }
        else:
            # A fleet rollback is a deployment marked ``rollback``, journaled like any
            # other; a bare rollback command is not acted on yet.
            self.reporter.event(
                "command_refused", journal=None, reason="unsupported_action", details=details
            )
            return
        self.reporter.event("command_done", journal=None, details=details)
