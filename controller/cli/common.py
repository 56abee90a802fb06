"""What every operator command shares: where the controller is, as whom, and how to print.

``EDGEFLEET_URL`` and ``EDGEFLEET_TOKEN`` say where and as whom; ``--json`` prints the
API's answer for scripts instead of tables. An API error prints one line and exits 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from .client import DEFAULT_URL, ApiError, ControllerClient

__all__ = ["DEFAULT_URL", "AsJson", "Token", "Url", "console", "print_json", "run_client"]

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
