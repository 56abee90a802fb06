"""``edgefleet controller serve``: startup, run, shutdown as three named phases.

Startup builds the app (migrations, keys) and, with ``--broker embedded``, binds the
amqtt broker; any failure there exits with ``EXIT_STARTUP_FAILURE`` and one clear line.
Run serves HTTP with uvicorn, whose signal handlers only set a flag on SIGTERM/SIGINT.
Shutdown lets uvicorn finish requests in flight (with a timeout), then stops the broker.

When the MQTT broker refuses the controller's credentials the fleet service stops (see
``service``); serve then shuts down the same graceful way and exits with
``EXIT_BROKER_AUTH``: an operator must fix the credentials, and a supervisor restarting
the process shows the failure rather than a controller that serves without devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import signal
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .app import create_app
from .ca import server_certificate_files
from .context import ControllerContext
from .devices.broker_auth import (
    controller_mqtt_credentials,
    decommissioned_among,
    embedded_broker_config,
)
from .errors import BrokerAuthError, ConfigError, ControllerError
from .settings import Settings

__all__ = ["EXIT_BROKER_AUTH", "EXIT_STARTUP_FAILURE", "serve", "uvicorn_config"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_STARTUP_FAILURE = 3
EXIT_BROKER_AUTH = 4  # as the agent's: the broker refused the credentials
GRACEFUL_SHUTDOWN_S = 30
FLEET_STOP_TIMEOUT_S = 10
MAX_REQUEST_HEADER_BYTES = 16 * 1024  # request line and headers together
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
# At shutdown a TLS connection that is closing is dropped after this: its close waits for
# the client's close_notify, which an idle client never sends (asyncio waits 30 s).
TLS_CLOSE_GRACE_S = 1.0


def serve(settings: Settings) -> int:
    try:
        app = create_app(settings)
    except (ControllerError, OSError) as exc:
        logger.error("startup failed: %s", exc)
        return EXIT_STARTUP_FAILURE
    try:
        return asyncio.run(_run(settings, app))
    except ConfigError as exc:
        logger.error("startup failed: %s", exc)
        return EXIT_STARTUP_FAILURE


async def _run(settings: Settings, app: Any) -> int:
    ctx: ControllerContext = app.state.ctx
    broker = await _start_broker(settings, ctx)
    if broker is not None:
        # The embedded broker checks logins; the controller's own client needs one too.
        username, password = controller_mqtt_credentials(settings)
        settings = settings.model_copy(
            update={"mqtt_username": username, "mqtt_password": password}
        )
    fleet_task = None
    refused: BrokerAuthError | None = None
    server = _Server(uvicorn_config(settings, app))
    delivery_task = _start_delivery(app)
    try:
        fleet_task = _start_fleet(settings, app) if settings.fleet_enabled else None
        if fleet_task is not None:
            fleet_task.add_done_callback(functools.partial(_exit_if_refused, server))
        await server.serve()
    finally:
        delivery_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await delivery_task
        if fleet_task is not None:
            fleet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                try:
                    async with asyncio.timeout(FLEET_STOP_TIMEOUT_S):
                        await fleet_task
                except BrokerAuthError as exc:
                    refused = exc
            logger.info("fleet loops stopped")
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.shutdown()
            logger.info("embedded MQTT broker stopped")
    if refused is not None:
        logger.error(
            "exiting with code %d: the MQTT broker refused the controller's credentials; "
            "fix EDGEFLEET_MQTT_USERNAME and EDGEFLEET_MQTT_PASSWORD (or the broker's users) "
            "and start again",
            EXIT_BROKER_AUTH,
        )
        return EXIT_BROKER_AUTH
    return EXIT_OK if server.started else EXIT_STARTUP_FAILURE


def uvicorn_config(settings: Settings, app: Any) -> uvicorn.Config:
    """uvicorn's configuration for ``app``, with the limits that come before the app.

    Request bodies are limited by the app's outermost layer (``controller.api.limits``);
    uvicorn limits what comes before: header size, how long request headers may take and
    how long an idle keep-alive connection stays open. ``limit_concurrency`` stays unset:
    it counts open connections, so idle sockets would turn it into a way to get every
    request answered 503.
    """
    cert_file, key_file = server_certificate_files(settings) if settings.tls else (None, None)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        http=_h11_with_header_timeout(settings.request_header_timeout_s),
        h11_max_incomplete_event_size=MAX_REQUEST_HEADER_BYTES,
        timeout_keep_alive=KEEP_ALIVE_S,
        ssl_certfile=cert_file,
        ssl_keyfile=key_file,
    )


def _h11_with_header_timeout(header_timeout_s: float) -> type[H11Protocol]:
    class H11WithHeaderTimeout(H11Protocol):
        """Closes a connection whose next request's headers are not complete within
        ``header_timeout_s``: uvicorn's keep-alive timer stops at the first byte, so a
        client sending a header a byte at a time would otherwise keep its socket forever.
        """

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._expect_headers(None)

        def on_response_complete(self) -> None:
            # Noted before uvicorn may start a pipelined request's cycle.
            finished = self.cycle
            super().on_response_complete()
            self._expect_headers(finished)

        def _expect_headers(self, current: object) -> None:
            self.loop.call_later(header_timeout_s, self._headers_due, current)

        def _headers_due(self, current: object) -> None:
            # No request began since: the connection is idle or its headers are stalled.
            if self.cycle is current and not self.transport.is_closing():
                self.transport.close()

        def shutdown(self) -> None:
            super().shutdown()
            if self.transport.get_extra_info("sslcontext") is not None:
                self.loop.call_later(TLS_CLOSE_GRACE_S, self._drop_once_closing)

        def _drop_once_closing(self) -> None:
            # Closing: the answer is sent and only the TLS close handshake is left, which
            # would hold the server's shutdown until the client answers it or asyncio
            # gives up. Still answering: look again later.
            if self.transport.is_closing():
                self.transport.abort()
            else:
                self.loop.call_later(TLS_CLOSE_GRACE_S, self._drop_once_closing)

    return H11WithHeaderTimeout


def _exit_if_refused(server: uvicorn.Server, fleet_task: asyncio.Task[None]) -> None:
    """Shut the HTTP server down (gracefully) when the fleet stopped on refused
    credentials; any other end of the fleet task is seen at shutdown, as before."""
    if not fleet_task.cancelled() and isinstance(fleet_task.exception(), BrokerAuthError):
        server.should_exit = True


def _start_delivery(app: Any) -> asyncio.Task[None]:
    """Jobs and channel pipelines, in every replica (they need no broker)."""
    from .pipelines.worker import DeliveryWorker

    return asyncio.create_task(DeliveryWorker(app.state.ctx).run(), name="delivery")


def _start_fleet(settings: Settings, app: Any) -> asyncio.Task[None]:
    """The MQTT bridge and the rollout loops, beside the HTTP server."""
    from .rollouts.engine import FleetContext
    from .service import FleetService

    ctx: ControllerContext = app.state.ctx
    fleet = FleetContext(
        settings=settings, engine=ctx.engine, signer=ctx.signer, read_engine=ctx.read_engine
    )
    service = FleetService(fleet, ctx.metrics.registry, status=ctx.fleet_status)
    logger.info("fleet loops started (MQTT %s)", settings.broker_url)
    return asyncio.create_task(service.run(), name="fleet")


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising the signal after shutdown.

    uvicorn re-delivers SIGTERM/SIGINT once it has stopped, which would kill the process
    before the broker is shut down; here the handlers only set uvicorn's exit flag.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.handle_exit, signum, None)
        try:
            yield
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)


async def _start_broker(settings: Settings, ctx: ControllerContext) -> Any:
    if settings.broker != "embedded":
        if not settings.broker.startswith(("mqtt://", "mqtts://")):
            raise ConfigError(
                f"--broker must be 'embedded' or mqtt://host:port, not {settings.broker!r}"
            )
        logger.info("using the MQTT broker at %s", settings.broker)
        return None
    _check_port_free(urlsplit(settings.broker_url).hostname or "", settings.mqtt_port)
    if settings.tls:
        _check_port_free(settings.mqtt_host, settings.mqtts_port)
    from .mqtt.embedded_broker import EmbeddedBroker

    # Devices log in with the credentials enrollment gave them, and only to their topics.
    broker = EmbeddedBroker(
        embedded_broker_config(settings, ctx.read_engine),
        revoked_clients=functools.partial(decommissioned_among, ctx.read_engine),
    )
    try:
        await broker.start()
    except Exception as exc:
        raise ConfigError(f"the embedded MQTT broker did not start: {exc}") from exc
    logger.info("embedded MQTT broker listening on %s", settings.broker_url)
    if settings.tls:
        logger.info(
            "embedded MQTT broker listening for devices on mqtts://%s:%d",
            settings.mqtt_host,
            settings.mqtts_port,
        )
    return broker


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"MQTT port {host}:{port} is taken: stop what listens there, or pass "
                    "--mqtt-port PORT, or use an external broker with --broker mqtt://host:port"
                ) from exc
            raise ConfigError(f"cannot bind the MQTT port {host}:{port}: {exc}") from exc
