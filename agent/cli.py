"""``edgefleet-agent``: the device daemon's command line.

The daemon itself (``run``) arrives with the agent's update path; today the command
line checks the trust root a device was provisioned with.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from protocol import Envelope, ProtocolError, verify_initial_trust_root

from . import __version__

__all__ = ["app", "main"]

app = typer.Typer(help="edgefleet device agent.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the agent version."""
    typer.echo(__version__)


@app.command("check-trust-root")
def check_trust_root(
    path: Annotated[Path, typer.Argument(help="The trust root file to install.")],
) -> None:
    """Verify that a trust root file is intact and signed by its own root keys."""
    try:
        trust_root = verify_initial_trust_root(Envelope.from_bytes(path.read_bytes()))
    except (ProtocolError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"trust root v{trust_root.version}, expires {trust_root.expires.isoformat()}: ok")


def main() -> None:
    sys.exit(app())
