"""What every command shares: where the controller is, as whom, and how to print.

``EDGEFLEET_URL`` and ``EDGEFLEET_TOKEN`` say where and as whom; ``--json`` prints the
API's answer for scripts instead of tables. An API error prints one line and exits 1;
so does any other failure, through ``fail``. Commands that run on the controller host
read its settings with ``settings_from``. An ``https`` controller with its own CA is
verified against the certificate file ``SSL_CERT_FILE`` names (httpx reads it), e.g.
``<data dir>/tls/ca.crt`` from ``edgefleet ca init``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from apiclient import DEFAULT_URL, ApiError, ControllerClient

from ..errors import ControllerError
from ..settings import Settings, load_settings

__all__ = [
    "DEFAULT_URL",
    "EXIT_FAILED",
    "EXIT_OK",
    "AsJson",
    "ConfigFile",
    "DataDir",
    "Token",
    "Url",
    "console",
    "fail",
    "print_json",
    "run_client",
    "settings_from",
]

console = Console(soft_wrap=True)  # hashes and paths must stay copyable

Url = Annotated[str, typer.Option("--url", envvar="EDGEFLEET_URL", help="Controller URL.")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="EDGEFLEET_TOKEN", help="API token.", show_default=False),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

T = TypeVar("T")


def run_client(url: str, token: str | None, call: Callable[[ControllerClient], T]) -> T:
    """Call the API with a fresh client; an API error prints one line and exits 1."""
    client = ControllerClient(url, token)
    try:
        return call(client)
    except ApiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        client.close()


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


EXIT_OK = 0
EXIT_FAILED = 1

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (env EDGEFLEET_DATA_DIR).", show_default=False),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="TOML settings file (env EDGEFLEET_CONFIG).", show_default=False),
]


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr; raise the result to exit 1."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_FAILED)


def settings_from(config: Path | None, **overrides: object) -> Settings:
    """The controller's settings (defaults, file, environment, then ``overrides``)."""
    try:
        return load_settings(config_file=config, overrides=overrides)
    except ControllerError as exc:
        raise fail(str(exc)) from exc
