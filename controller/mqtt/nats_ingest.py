"""Device reports from a NATS cluster: a JetStream stream read through one durable
consumer that every controller replica shares.

Devices speak MQTT 3.1.1 to any node of the cluster; NATS turns each topic into a subject
(``/`` becomes ``.``; NATS 2.10 and later write a ``.`` inside a level as ``//``). The
stream ``settings.nats_stream`` captures ``{prefix}.*.state``, ``….events`` and
``….telemetry`` as they are published, on whichever node, and keeps them (file storage,
3 copies on a cluster) while no controller reads them, up to ``nats_max_age_s`` and
``nats_max_bytes``.

Invariants:
- every replica pulls from the same durable consumer ``settings.nats_consumer``, so each
  message goes to one replica: the work is split, and a replica that stops leaves its
  share to the others;
- a message is acknowledged only once it is written (``MqttBridge.store``): one that a
  replica took and did not write is delivered again, to any replica: at once when the
  replica stops (it gives them back), after ``ACK_WAIT_S`` when it died or its database
  failed that long; writing is idempotent, so nothing is stored twice;
- at most ``MAX_ACK_PENDING`` messages are out and unacknowledged at once across the
  replicas: memory stays bounded however far behind the controllers are;
- the stream and the consumer are created, or brought to these settings, at every
  (re)connect, so a cluster that lost them (a new cluster) gets them back;
- the NATS client reconnects by itself to any node it knows of; a session that fails
  anyway is retried with jittered backoff; refused credentials end ``run()`` with
  ``BrokerAuthError``, as the MQTT bridge does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from protocol import Channel, backoff_delay_s

from ..errors import BrokerAuthError, ConfigError
from ..settings import Settings
from .bridge import MqttBridge, broker_tls_context

__all__ = ["NatsIngest", "nats_subjects", "subject_topic"]

logger = logging.getLogger(__name__)

FETCH_WAIT_S = 1.0
ACK_WAIT_S = 60.0
GIVE_BACK_TIMEOUT_S = 2.0
MAX_ACK_PENDING = 20_000
CONNECT_TIMEOUT_S = 10.0
JETSTREAM_TIMEOUT_S = 10.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
CLUSTER_REPLICAS = 3
# JetStream's error code for "replicas > 1 not supported in non-clustered mode".
NOT_CLUSTERED_CODE = 10074
REPORT_CHANNELS = (Channel.STATE, Channel.EVENTS, Channel.TELEMETRY)


def nats_subjects(prefix: str) -> list[str]:
    """The subjects devices publish reports on, as the stream captures them."""
    base = prefix.replace("/", ".")
    return [f"{base}.*.{channel.value}" for channel in REPORT_CHANNELS]


def subject_topic(subject: str) -> str:
    """The MQTT topic NATS made ``subject`` from (``//`` is a ``.`` inside a level)."""
    return subject.replace("//", "\0").replace(".", "/").replace("\0", ".")


def nats_servers(url: str) -> list[str]:
    servers = [server.strip() for server in url.split(",")]
    for server in servers:
        parts = urlsplit(server)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ConfigError(f"nats_url entry {server!r} is not nats://host:port or tls://…")
    return servers


class NatsIngest:
    """Pulls device reports from JetStream and stores them through the bridge."""

    def __init__(self, settings: Settings, bridge: MqttBridge) -> None:
        self._settings = settings
        self._bridge = bridge
        self._servers = nats_servers(settings.nats_url)
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret
        self.connected = False

    async def run(self) -> None:
        """Read and store until cancelled; raises ``BrokerAuthError`` when NATS refuses
        the controller's credentials."""
        attempt = 0
        while True:
            try:
                await self._session()
            except BrokerAuthError:
                raise
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                attempt += 1
                delay_s = backoff_delay_s(
                    attempt, initial_s=BACKOFF_INITIAL_S, max_s=BACKOFF_MAX_S, rng=self._rng
                )
                logger.warning("NATS ingest down (%r); retrying in %.2f s", exc, delay_s)
                await asyncio.sleep(delay_s)
            else:
                attempt = 0

    async def _session(self) -> None:
        client = await self._connect()
        try:
            jetstream = client.jetstream(timeout=JETSTREAM_TIMEOUT_S)
            await self._ensure_stream(jetstream)
            subscription = await jetstream.pull_subscribe(
                "",
                durable=self._settings.nats_consumer,
                stream=self._settings.nats_stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=ACK_WAIT_S,
                    max_ack_pending=MAX_ACK_PENDING,
                ),
            )
            self.connected = True
            logger.info(
                "NATS ingest reading stream %s as consumer %s",
                self._settings.nats_stream,
                self._settings.nats_consumer,
            )
            batch_size = self._settings.ingest_batch_size
            while True:
                try:
                    messages = await subscription.fetch(batch_size, timeout=FETCH_WAIT_S)
                except nats.errors.TimeoutError:
                    continue
                try:
                    await self._bridge.store(
                        [(subject_topic(message.subject), message.data) for message in messages]
                    )
                except asyncio.CancelledError:
                    await _give_back(messages)
                    raise
                for message in messages:
                    await message.ack()
        finally:
            self.connected = False
            await client.close()

    async def _connect(self) -> NatsClient:
        """Connect to any of the servers; the client then reconnects by itself. The NATS
        client retries refused credentials forever, so the first refusal is taken as the
        answer: ``BrokerAuthError``."""
        settings = self._settings
        tls: ssl.SSLContext | None = None
        if any(server.startswith("tls://") for server in self._servers):
            tls = broker_tls_context(settings)
        user = settings.mqtt_username or None
        refused = asyncio.Event()

        async def on_error(exc: Exception) -> None:
            if "authorization violation" in str(exc).lower():
                refused.set()
            logger.warning("NATS client: %r", exc)

        connecting = asyncio.create_task(
            nats.connect(
                servers=self._servers,
                user=user,
                password=(settings.mqtt_password or None) if user else None,
                tls=tls,
                name=settings.mqtt_client_id,
                connect_timeout=int(CONNECT_TIMEOUT_S),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=on_error,
            ),
            name="nats-connect",
        )
        refusal = asyncio.create_task(refused.wait(), name="nats-refused")
        try:
            await asyncio.wait((connecting, refusal), return_when=asyncio.FIRST_COMPLETED)
        finally:
            refusal.cancel()
            if not connecting.done():
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
        if connecting.cancelled():
            raise BrokerAuthError(
                f"NATS refused the controller's credentials (user {user!r}; set mqtt_username "
                "and mqtt_password)"
            )
        return connecting.result()

    async def _ensure_stream(self, jetstream: JetStreamContext) -> None:
        settings = self._settings
        replicas = settings.nats_replicas or CLUSTER_REPLICAS
        config = StreamConfig(
            name=settings.nats_stream,
            subjects=nats_subjects(settings.topic_prefix),
            storage=StorageType.FILE,
            num_replicas=replicas,
            max_age=settings.nats_max_age_s,
            max_bytes=settings.nats_max_bytes,
        )
        try:
            await self._add_or_update(jetstream, config)
        except nats.js.errors.BadRequestError as exc:
            if settings.nats_replicas or exc.err_code != NOT_CLUSTERED_CODE:
                raise ConfigError(f"cannot create the stream {config.name}: {exc}") from exc
            config.num_replicas = 1  # a single server, not a cluster
            await self._add_or_update(jetstream, config)

    @staticmethod
    async def _add_or_update(jetstream: JetStreamContext, config: StreamConfig) -> None:
        try:
            await jetstream.stream_info(config.name or "")
        except nats.js.errors.NotFoundError:
            await jetstream.add_stream(config)
        else:
            await jetstream.update_stream(config)


async def _give_back(messages: list[Msg]) -> None:
    """Negative acknowledgements, so another replica gets them now rather than after
    ``ACK_WAIT_S``; best effort (``GIVE_BACK_TIMEOUT_S``), since the server redelivers
    them then anyway."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(GIVE_BACK_TIMEOUT_S):
            for message in messages:
                await message.nak()
