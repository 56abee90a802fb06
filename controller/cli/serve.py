"""``edgefleet controller serve``: run the controller until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from .common import ConfigFile, DataDir, settings_from

__all__ = ["controller_app"]

controller_app = typer.Typer(help="Run the controller.", no_args_is_help=True)


def configure_logging() -> None:
    """Logging is configured here, at the entry point, once."""
    logging.basicConfig(
        level=os.environ.get("EDGEFLEET_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # amqtt logs every packet and state change at INFO.
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@controller_app.command("serve")
def controller_serve(
    host: Annotated[str | None, typer.Option(help="HTTP address (env EDGEFLEET_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (env EDGEFLEET_PORT).")] = None,
    data_dir: DataDir = None,
    broker: Annotated[
        str | None,
        typer.Option(help="'embedded' or mqtt://host:port (env EDGEFLEET_BROKER)."),
    ] = None,
    mqtt_port: Annotated[
        int | None, typer.Option(help="Embedded broker port (env EDGEFLEET_MQTT_PORT).")
    ] = None,
    release_key: Annotated[
        str | None,
        typer.Option(
            "--release-key",
            help="'online', or 'offline' to keep it off this host (env EDGEFLEET_RELEASE_KEY).",
        ),
    ] = None,
    tls: Annotated[
        bool | None,
        typer.Option(
            "--tls/--no-tls",
            help="HTTPS, MQTT over TLS and device certificates; needs `edgefleet ca init` "
            "(env EDGEFLEET_TLS).",
            show_default=False,
        ),
    ] = None,
    mqtts_port: Annotated[
        int | None, typer.Option(help="Embedded broker TLS port (env EDGEFLEET_MQTTS_PORT).")
    ] = None,
    config: ConfigFile = None,
) -> None:
    """Serve the API (and the embedded MQTT broker) until SIGTERM or SIGINT."""
    # Imported here: the server (FastAPI, the app, the broker) is most of the CLI's start-up
    # time, and every other command does without it.
    from ..server import serve

    configure_logging()
    settings = settings_from(
        config,
        host=host,
        port=port,
        data_dir=data_dir,
        broker=broker,
        mqtt_port=mqtt_port,
        release_key=release_key,
        tls=tls,
        mqtts_port=mqtts_port,
    )
    raise typer.Exit(serve(settings))
