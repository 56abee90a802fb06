"""``edgefleet ca …``: the controller's certificate authority (run on the controller host).

The CA key's passphrase comes from ``EDGEFLEET_CA_KEY_PASSPHRASE`` (unset: the key is
stored unencrypted, mode 0600, in the private data directory), never from an argument.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from ..ca import CA_PASSPHRASE_ENV, CertificateAuthority, init_ca
from ..context import prepare_data_dir
from ..errors import ControllerError
from .common import ConfigFile, DataDir, fail, settings_from

__all__ = ["ca_app"]

ca_app = typer.Typer(
    help="The certificate authority for HTTPS, MQTT over TLS and device certificates.",
    no_args_is_help=True,
)


def _passphrase() -> bytes | None:
    return os.environ.get(CA_PASSPHRASE_ENV, "").encode() or None


@ca_app.command("init")
def ca_init(
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="A name devices reach the controller and broker by (repeat); default: "
            "tls_hosts, else the hosts of public_url and public_broker_url, and localhost.",
        ),
    ] = None,
    import_cert: Annotated[
        Path | None,
        typer.Option("--import-cert", help="Use your CA: its certificate (PEM)."),
    ] = None,
    import_key: Annotated[
        Path | None,
        typer.Option("--import-key", help="Use your CA: its private key (PEM)."),
    ] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create the CA (or import yours) and the server certificate; print the CA's SHA-256."""
    settings = settings_from(config, data_dir=data_dir, tls_hosts=host or None)
    now = datetime.now(UTC)
    try:
        prepare_data_dir(settings)
        authority = init_ca(
            settings.tls_dir,
            name=f"edgefleet CA {now:%Y-%m-%d}",
            now=now,
            import_certificate=import_cert,
            import_key=import_key,
            passphrase=_passphrase(),
        )
        authority.ensure_service_certificates(
            settings.server_tls_hosts, settings.controller_mqtt_username, now=now
        )
    except (ControllerError, OSError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"wrote the CA and the server certificate to {settings.tls_dir}")
    typer.echo(f"server certificate names: {', '.join(settings.server_tls_hosts)}")
    typer.echo(f"CA SHA-256: {authority.sha256}")
    typer.echo("start the controller with --tls (or tls = true) to use them")


@ca_app.command("show")
def ca_show(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """The CA's subject, expiry and SHA-256 (what devices pin with --ca-sha256)."""
    settings = settings_from(config, data_dir=data_dir)
    try:
        authority = CertificateAuthority.load(settings.tls_dir, _passphrase())
    except ControllerError as exc:
        raise fail(str(exc)) from exc
    certificate = authority.certificate
    typer.echo(f"subject: {certificate.subject.rfc4514_string()}")
    typer.echo(f"expires: {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    typer.echo(f"SHA-256: {authority.sha256}")
